#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA GPU (a 450 s budget, sized for one H200; nothing
# is downloaded or installed). docs/gpu_check.md says what each step checks and how to read the report.
#
#   bash scripts/gpu_check.sh [--out DIR] [--work DIR] [--budget SECONDS] [--steps A,B] [--dry-run]
#
#   --out DIR     report.md, report.json, steps.log (every step's output, one section each) and steps.tsv
#                 (default gpu_check_report/); four files, so that all of them come back from a device run
#   --work DIR    scratch folder for the generated data, option files, demo and training runs
#                 (default: a new temporary folder, removed at the end)
#   --budget S    wall-clock limit of all steps together (default 450); each step also has its own
#                 timeout, cut to what is left of the budget; a step that finds no time left is skipped
#   --steps A,B   run only these steps (names as --dry-run lists them; setup is added when lora-bf16 or
#                 ddp is asked for)
#   --dry-run     list the steps and their commands, run nothing
#
# Python: ${IQA_PLUGIN_VENV:-.venv}/bin/python when present, else python3 (it needs torch, basicsr and
# the plugin's dependencies installed). Without a CUDA device (per torch) it says so and exits 0.
# Exit status: 0 when no step failed, 1 when one did, 2 when Python or torch cannot be started.
set -u
cd "$(dirname "$0")/.." || exit 2

OUT=gpu_check_report
WORK=
BUDGET=450
DRY=0
ONLY=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --steps) ONLY=,$2,; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
    esac
done

VENV=${IQA_PLUGIN_VENV:-.venv}
if [ -x "$VENV/bin/python" ]; then PY=$VENV/bin/python; else PY=$(command -v python3 || echo python3); fi
case $PY in /*) ;; *) PY=$(pwd)/$PY ;; esac  # steps run from other folders too
echo "gpu_check: python $PY ($( [ -x "$VENV/bin/python" ] && echo "the venv $VENV" || echo "no venv at $VENV" ))"

# the repository's package, installed or not (steps run from other folders too)
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH}
# nothing is downloaded: weights come from the package or ../shared; pyiqa/HF hubs stay offline
export IQA_PLUGIN_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
for d in ../shared/weights/milo shared/weights/milo; do
    if [ -z "${IQA_PLUGIN_WEIGHTS_DIR:-}" ] && [ -f "$d/MILO.pth" ]; then
        export IQA_PLUGIN_WEIGHTS_DIR=$(cd "$d" && pwd)
    fi
done
if [ -n "${IQA_PLUGIN_WEIGHTS_DIR:-}" ] && [ -d "$IQA_PLUGIN_WEIGHTS_DIR" ]; then  # absolute: steps run elsewhere too
    export IQA_PLUGIN_WEIGHTS_DIR=$(cd "$IQA_PLUGIN_WEIGHTS_DIR" && pwd)
fi
MILO_NOTE="official MILO weights: ${IQA_PLUGIN_WEIGHTS_DIR:-not set (IQA_PLUGIN_WEIGHTS_DIR; no MILO.pth in ../shared/weights/milo or shared/weights/milo)}"
CLI="$PY -m iqa_plugin.cli"

# ----------------------------------------------------------------------------------------- the steps
# name | own timeout (s) | what it checks | command (run with bash -c in the repository root)
STEPS=(
"setup|60|tiny data, random base network and option files for the LoRA and DDP steps (scripts/gpu_check.py setup)|$PY scripts/gpu_check.py setup \"\$WORK\""
"cuda-tests|150|the test suite's CUDA tests: files that mention cuda, tests whose name has cuda or gpu (skipped on a CPU)|$PY -m pytest -q -rs -p no:cacheprovider -k 'cuda or gpu' \$(grep -il cuda tests/test_*.py | grep -v -e test_gpu_check.py -e test_bench_train_step.py)"
"train-step|150|bench train-step on CUDA: each plugin loss on an RRDB-23 (B12) and a SwinIR (B8) step at GT 256 vs L1 and VGG19; peak memory|$CLI bench train-step --device cuda"
"lora-bf16|100|NRIQAFinetuneModel with LoRA, amp bf16, channels_last through iqa-plugin train: 30 iterations, tiny RRDB|cd \"\$WORK/lora\" && $CLI train -opt lora_bf16.yml"
"demo|150|iqa-plugin demo, 200 iterations on the GPU (small SwinIR, L1 + MILO + relational), validation vs bicubic|$CLI demo --iters 200 --out \"\$WORK/demo\""
"gt-sampling|90|bench gt-sampling on CUDA: AMO vs UPos per training iteration (small RRDB and RRDB-23)|$CLI bench gt-sampling --device cuda"
"ddp|120|two-process DDP (torchrun --nproc_per_node=2, nccl): IQASRModel with a MILO loss, 10 iterations (2+ GPUs)|cd \"\$WORK/ddp\" && $PY -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29517 -m iqa_plugin.train -opt ddp.yml --launcher pytorch"
"milo|90|bench milo (CPU: the bench has no --device): MILO loss vs LPIPS-VGG (random VGG, no download), official weights|$CLI bench milo"
"afine|120|bench afine (CPU: the bench has no --device): batched A-FINE vs pyiqa's, random weights|$CLI bench afine --repeats 3"
)

if [ -n "$ONLY" ]; then
    known=",$(for s in "${STEPS[@]}"; do printf '%s,' "${s%%|*}"; done)"
    for n in ${ONLY//,/ }; do
        case "$known" in *",$n,"*) ;; *) echo "gpu_check.sh: unknown step $n; known: ${known:1:-1}" >&2; exit 2 ;; esac
    done
    case "$ONLY" in *,lora-bf16,*|*,ddp,*) ONLY="$ONLY,setup," ;; esac
    kept=()
    for s in "${STEPS[@]}"; do case "$ONLY" in *",${s%%|*},"*) kept+=("$s") ;; esac; done
    STEPS=("${kept[@]}")
fi

if [ "$DRY" = 1 ]; then
    echo "gpu_check: dry run, nothing is run; out $OUT, work ${WORK:-<temporary folder>}, budget ${BUDGET} s"
    echo "gpu_check: $MILO_NOTE"
    i=0
    for s in "${STEPS[@]}"; do
        IFS='|' read -r name limit what cmd <<<"$s"
        i=$((i + 1))
        echo "$i. $name (timeout ${limit} s): $what"
        echo "     $cmd"
    done
    echo "(ddp runs only when torch sees 2 or more GPUs; milo needs the official MILO weights)"
    exit 0
fi

# a CPU machine: nothing to check
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null
rc=$?
if [ $rc = 3 ]; then
    echo "gpu_check: no CUDA device visible to torch ($PY): the GPU checks need one, nothing was run"
    exit 0
elif [ $rc != 0 ]; then
    echo "gpu_check: $PY cannot import torch: $("$PY" -c 'import torch' 2>&1 | tail -1)" >&2
    exit 2
fi
# the packages the steps import, and the plugin itself (its own imports: basicsr's addict, lmdb, ...)
missing=$("$PY" - <<'PYEOF' 2>&1
import importlib
names = ['torch', 'torchvision', 'basicsr', 'pyiqa', 'lpips', 'peft', 'timm', 'cv2', 'yaml', 'skimage', 'pytest']
gone = [n for n in names if importlib.util.find_spec(n) is None]
if not gone:
    try:
        import iqa_plugin  # noqa: F401
    except Exception as e:  # a dependency of a dependency
        gone.append(f'iqa_plugin ({type(e).__name__}: {e})')
print(', '.join(gone))
PYEOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: $PY cannot import: $missing (install them, or carry wheels: docs/gpu_check.md)" >&2
    exit 2
fi
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
if [ -z "$WORK" ]; then WORK=$(mktemp -d -t iqa_gpu_check.XXXXXX); CLEAN_WORK=1; else mkdir -p "$WORK"; CLEAN_WORK=0; fi
WORK=$(cd "$WORK" && pwd)
export WORK
mkdir -p "$WORK/logs"
TSV=$OUT/steps.tsv
printf 'step\tstatus\tseconds\ttimeout\trc\tnote\n' >"$TSV"
: >"$OUT/steps.log"
echo "gpu_check: $NGPU GPU(s): $GPU; $MILO_NOTE; out $OUT; work $WORK; budget $BUDGET s"
START=$(date +%s)

record() {  # name status seconds timeout rc note; the step's log (if any) goes into steps.log
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"
    printf 'gpu_check: %-12s %-4s %5s s  %s\n' "$1" "$2" "$3" "$6"
    { echo "===== step $1 ====="; [ -f "$WORK/logs/$1.log" ] && cat "$WORK/logs/$1.log"; echo; } >>"$OUT/steps.log"
}

for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit what cmd <<<"$s"
    log=$WORK/logs/$name.log
    rm -f "$log"
    if [ "$name" = ddp ] && [ "$NGPU" -lt 2 ]; then
        record ddp skip 0 "$limit" - "torch sees $NGPU GPU: two-process DDP needs 2"
        continue
    fi
    if [ "$name" = milo ] && [ ! -f "${IQA_PLUGIN_WEIGHTS_DIR:-/nonexistent}/MILO.pth" ]; then
        record milo skip 0 "$limit" - "official MILO weights absent: set IQA_PLUGIN_WEIGHTS_DIR (e.g. ../shared/weights/milo)"
        continue
    fi
    left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 15 ]; then
        record "$name" skip 0 "$limit" - "budget of $BUDGET s spent"
        continue
    fi
    t=$limit
    [ "$left" -lt "$t" ] && t=$left
    echo "\$ $cmd" >"$log"
    t0=$(date +%s)
    timeout -k 10 "$t" bash -c "$cmd" >>"$log" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    if [ $rc = 0 ]; then
        record "$name" pass "$dt" "$t" 0 ""
    elif [ $rc = 124 ] || [ $rc = 137 ]; then
        record "$name" fail "$dt" "$t" "$rc" "timed out after $t s"
    else
        record "$name" fail "$dt" "$t" "$rc" "exit status $rc: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-160)"
    fi
done

echo "gpu_check: all steps in $(($(date +%s) - START)) s"
"$PY" scripts/gpu_check.py report "$OUT" --work "$WORK" --gpu "$GPU" --gpus "$NGPU" --python "$PY"
status=$?
[ "$CLEAN_WORK" = 1 ] && rm -rf "$WORK"
exit $status
