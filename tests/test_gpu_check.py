"""scripts/gpu_check.sh and its helper scripts/gpu_check.py, without a GPU: --dry-run lists the steps and runs
nothing, a machine without CUDA gets one line and status 0, bad arguments fail, the setup step writes option
files that pass the pre-flight, and the report reads each step's figures and status from fabricated logs."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'gpu_check.sh'
STEPS = ['setup', 'cuda-tests', 'train-step', 'lora-bf16', 'demo', 'gt-sampling', 'ddp', 'milo', 'afine']


def helper():
    spec = importlib.util.spec_from_file_location('gpu_check_helper', REPO / 'scripts' / 'gpu_check.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, **env):
    return subprocess.run(['bash', str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **env})


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / 'out'
    r = run('--dry-run', '--out', str(out), IQA_PLUGIN_VENV=str(tmp_path / 'no_venv'))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert 'python3' in lines[0] and 'no venv' in lines[0]
    listed = [ln.split('. ', 1)[1].split(' ')[0] for ln in lines if ln[:1].isdigit()]
    assert listed == STEPS
    assert 'bench train-step --device cuda' in r.stdout and "-k 'cuda or gpu'" in r.stdout
    assert not out.exists()
    r = run('--dry-run', '--steps', 'ddp,demo')
    assert [ln.split('. ', 1)[1].split(' ')[0] for ln in r.stdout.splitlines() if ln[:1].isdigit()] == \
        ['setup', 'demo', 'ddp']


def test_bad_arguments_fail():
    assert run('--steps', 'nothing').returncode == 2
    assert run('--frobnicate').returncode == 2


def test_machine_without_cuda_says_so_and_exits_0(tmp_path):
    out = tmp_path / 'out'
    r = run('--out', str(out), CUDA_VISIBLE_DEVICES='')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith('gpu_check: no CUDA device visible to torch')
    assert not out.exists()


def test_missing_packages_stop_before_any_step(tmp_path):
    """A Python with CUDA but without the plugin's dependencies: one line naming them, status 2, nothing run."""
    fake = tmp_path / 'venv' / 'bin' / 'python'
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/bash\n[ "$1" = - ] && { cat >/dev/null; echo "basicsr, pyiqa"; exit 0; }\nexit 0\n')
    fake.chmod(0o755)
    out = tmp_path / 'out'
    r = run('--out', str(out), IQA_PLUGIN_VENV=str(tmp_path / 'venv'))
    assert r.returncode == 2
    assert r.stderr.strip().endswith('cannot import: basicsr, pyiqa (install them, or carry wheels: docs/gpu_check.md)')
    assert not out.exists()


def test_setup_writes_options_that_pass_the_preflight(tmp_path):
    from iqa_plugin.basicsr_glue.options_check import check_options, load_yaml

    files = helper().setup(tmp_path)
    assert len(list((tmp_path / 'data' / 'HR').glob('*.png'))) == 8
    for path in files:
        opt = load_yaml(path)
        check_options(opt)
        assert opt['num_gpu'] == 'auto'
    lora_opt = load_yaml(tmp_path / 'lora' / 'lora_bf16.yml')
    assert lora_opt['train']['amp'] == 'bf16' and lora_opt['model_type'] == 'NRIQAFinetuneModel'
    assert load_yaml(tmp_path / 'ddp' / 'ddp.yml')['dist_params']['backend'] == 'nccl'


def write_sections(out, logs):
    out.mkdir(parents=True, exist_ok=True)
    (out / 'steps.log').write_text(''.join(f'===== step {k} =====\n$ cmd\n{v}\n' for k, v in logs.items()))


def _fake_run(out, work):
    logs = {}
    ts = {'bench': 'train-step', 'ratio': {'rrdb': {'l1': 1.0, 'vgg19': 1.4, 'milo-pseudomos': 1.03}},
          'ms': {'rrdb': {'l1': 100.0, 'vgg19': 140.0, 'milo-pseudomos': 103.0}},
          'loss_ms': {'rrdb': {'l1': 1.0, 'vgg19': 41.0, 'milo-pseudomos': 4.0}},
          'ratio_within': {'rrdb': {'l1': 1.0, 'vgg19': 1.4, 'milo-pseudomos': 1.03}},
          'step_peak_mib': {'rrdb': {'l1': 900.0, 'vgg19': 1500.0, 'milo-pseudomos': 950.0}},
          'skipped': {'milo': 'absent'}, 'goal': {'met': True, 'failures': []}, 'gpu': 'H200'}
    logs['train-step'] = 'rrdb: ...\nwarning\n' + json.dumps(ts) + '\n'
    logs['cuda-tests'] = ('..s\nSKIPPED [1] tests/test_x.py:3: needs two GPUs\n'
                          '2 passed, 1 skipped, 90 deselected in 12.3s\n')
    logs['demo'] = ('iqa-plugin demo: training swinir x4 for 200 iterations on CPU\n'
                    '    psnr             23.894     23.423   higher   better (+0.471)\nDemo finished in 1.0 min.\n')
    logs['gt-sampling'] = 'no json here\n'
    logs['ddp'] = ''
    write_sections(out, logs)
    exp = work / 'lora' / 'experiments' / 'gpu_check_lora_bf16'
    exp.mkdir(parents=True)
    (exp / 'train_x.log').write_text(
        '    amp: bf16\nINFO: LoRA fine-tuning: 10 of 100 net_g parameters trainable\n'
        'INFO: [gpu_c..][epoch:  0, iter:      30, lr:(1.000e-04,)] [eta: 0:00:00] l_pix: 4.6e-01 l_nr: 5.4e-02 \n'
        'INFO: Validation val\n\t # psnr: 5.4005\tBest: 5.4005 @ 30 iter\n'
        'INFO: Validation val @ iter 32 skipped: no training step since the validation @ iter 30\n')
    rows = [('train-step', 'pass', 60, 150, 0, ''), ('cuda-tests', 'pass', 30, 150, 0, ''),
            ('lora-bf16', 'pass', 20, 100, 0, ''), ('demo', 'pass', 50, 150, 0, ''),
            ('gt-sampling', 'pass', 10, 90, 0, ''), ('ddp', 'skip', 0, 120, '-', 'torch sees 1 GPU'),
            ('afine', 'fail', 120, 120, 124, 'timed out after 120 s')]
    (out / 'steps.tsv').write_text('step\tstatus\tseconds\ttimeout\trc\tnote\n'
                                   + ''.join('\t'.join(map(str, r)) + '\n' for r in rows))


def test_report_reads_figures_and_status(tmp_path, capsys):
    out, work = tmp_path / 'out', tmp_path / 'work'
    _fake_run(out, work)
    assert helper().report(out, work=work, gpu='H200', gpus='1', python='python3') == 1
    rep = json.loads((out / 'report.json').read_text())
    steps = {r['step']: r for r in rep['steps']}
    assert list(steps) == ['train-step', 'cuda-tests', 'lora-bf16', 'demo', 'gt-sampling', 'ddp', 'afine']
    assert steps['train-step']['status'] == 'pass'
    assert steps['train-step']['figures']['ratio']['rrdb']['milo-pseudomos'] == 1.03
    assert steps['train-step']['figures']['step_peak_mib']['rrdb']['vgg19'] == 1500.0
    assert steps['cuda-tests']['figures']['passed'] == 2
    assert steps['cuda-tests']['figures']['skip_reasons'] == ['needs two GPUs']
    lora = steps['lora-bf16']
    assert lora['status'] == 'pass' and lora['figures']['losses'] == {'l_pix': 0.46, 'l_nr': 0.054}
    assert lora['figures']['validation'] == {'psnr': 5.4005} and lora['figures']['amp'] == 'bf16'
    # exit status 0 is not enough: the demo must have trained on the GPU, a bench must end with its JSON line
    assert steps['demo']['status'] == 'fail' and 'GPU' in steps['demo']['note']
    assert steps['demo']['figures']['validation']['psnr'] == {'ours': 23.894, 'bicubic': 23.423,
                                                              'direction': 'higher', 'ours_better': True}
    assert steps['gt-sampling']['status'] == 'fail' and 'JSON' in steps['gt-sampling']['note']
    assert steps['ddp']['status'] == 'skip' and steps['afine']['note'] == 'timed out after 120 s'
    assert rep['failed'] == ['demo', 'gt-sampling', 'afine'] and rep['skipped'] == ['ddp']
    md = (out / 'report.md').read_text()
    assert '| train-step | pass | 60 | rrdb: vgg19 1.400, milo-pseudomos 1.030; goal met |' in md
    assert '| milo-pseudomos | 103.0 | 1.030 | 4.0 | 1.030 | 950 |' in md
    assert md in capsys.readouterr().out + '\n'


@pytest.mark.parametrize('log,why', [
    ('sss\n3 skipped, 20 deselected in 2.0s\n', 'no CUDA test ran'),
    ('.s\nSKIPPED [1] tests/test_lora.py:337: needs a CUDA GPU\n1 passed, 1 skipped in 2.0s\n', 'needs a CUDA GPU')])
def test_report_fails_when_cuda_tests_did_not_run(tmp_path, log, why):
    out = tmp_path / 'out'
    write_sections(out, {'cuda-tests': log})
    (out / 'steps.tsv').write_text('step\tstatus\tseconds\ttimeout\trc\tnote\ncuda-tests\tpass\t5\t150\t0\t\n')
    assert helper().report(out) == 1
    row = json.loads((out / 'report.json').read_text())['steps'][0]
    assert row['status'] == 'fail' and why in row['note']


@pytest.mark.parametrize('text,expected', [('{"a": 1}\n{"b": 2}\ntrailing\n', {'b': 2}), ('{bad\n', None)])
def test_last_json(text, expected):
    assert helper().last_json(text) == expected
