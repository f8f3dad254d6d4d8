"""Helper of scripts/gpu_check.sh (docs/gpu_check.md).

    python scripts/gpu_check.py setup WORK        tiny data, a random base network and the option files of
                                                  the LoRA (WORK/lora/lora_bf16.yml) and DDP (WORK/ddp/ddp.yml)
                                                  steps; nothing is downloaded
    python scripts/gpu_check.py report OUT [--work WORK] [--gpu NAME] [--gpus N] [--python PY]
                                                  OUT/report.md and OUT/report.json from OUT/steps.tsv and
                                                  OUT/steps.log (each bench's JSON last line, pytest's
                                                  summary, the demo's validation table) and the training
                                                  logs under WORK

``report`` needs only the standard library; its exit status is 1 when a step failed, else 0.
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

LORA_ITERS = 30
DDP_ITERS = 10
# a small RRDB as in ``bench lora`` (32 features, 2 blocks): the LoRA step checks the CUDA path, not speed
LORA_NET = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 32, 'num_block': 2, 'num_grow_ch': 16}
DDP_NET = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 1, 'num_grow_ch': 8}


# ---------------------------------------------------------------------------------------------- setup
def write_pairs(root, n=8, size=128, scale=4, seed=0):
    """n smooth textured HR images (size px) and their bicubic x``scale`` LR under root/HR and root/LRx4."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / 'HR').mkdir(parents=True, exist_ok=True)
    (root / 'LRx4').mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.uniform(0, 255, size=(size // 8, size // 8, 3)).astype(np.float32)
        hr = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (size, size, 3))
        hr = np.clip(hr, 0, 255).astype(np.uint8)
        lr = cv2.resize(hr, (size // scale, size // scale), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / 'HR' / f'img{i:02d}.png'), hr)
        cv2.imwrite(str(root / 'LRx4' / f'img{i:02d}.png'), lr)
    return root


def _datasets(data, gt_size, batch, n_val=2):
    val_root = data.parent / 'val'
    if not val_root.is_dir():  # the first n_val pairs as validation set
        for sub in ('HR', 'LRx4'):
            (val_root / sub).mkdir(parents=True)
            for f in sorted((data / sub).glob('*.png'))[:n_val]:
                (val_root / sub / f.name).write_bytes(f.read_bytes())
    pair = {'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'}}
    return {'train': {'name': 'train', **pair, 'dataroot_gt': str(data / 'HR'), 'dataroot_lq': str(data / 'LRx4'),
                      'gt_size': gt_size, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 2,
                      'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 10, 'prefetch_mode': None},
            'val': {'name': 'val', **pair, 'dataroot_gt': str(val_root / 'HR'), 'dataroot_lq': str(val_root / 'LRx4')}}


def _common(name, iters):
    return {'name': name, 'scale': 4, 'num_gpu': 'auto', 'manual_seed': 0,
            'logger': {'print_freq': max(iters // 3, 1), 'save_checkpoint_freq': iters, 'use_tb_logger': False,
                       'wandb': {'project': None, 'resume_id': None}},
            'val': {'val_freq': iters, 'save_img': False,
                    'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}}}}


def lora_options(work, base):
    """NRIQAFinetuneModel, LoRA rank 4, L1 + nr-lite, amp bf16, channels_last, LORA_ITERS iterations."""
    opt = _common('gpu_check_lora_bf16', LORA_ITERS)
    opt.update({
        'model_type': 'NRIQAFinetuneModel', 'network_g': dict(LORA_NET), 'datasets': _datasets(work / 'data', 64, 4),
        'path': {'pretrain_network_g': str(base), 'strict_load_g': True, 'resume_state': None},
        'train': {'lora': {'enabled': True, 'rank': 4, 'alpha': 4}, 'amp': 'bf16', 'channels_last': True,
                  'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10 * LORA_ITERS], 'gamma': 0.5},
                  'total_iter': LORA_ITERS, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
                  'iqa_opt': {'nr': {'type': 'NRIQALoss', 'metric': 'nr-lite', 'loss_weight': 0.1}}},
        'dist_params': {'backend': 'nccl', 'port': 29500}})
    opt['val']['metrics']['nr_lite'] = {'type': 'nr-lite'}
    return opt


def ddp_options(work):
    """IQASRModel, L1 + MILO (pseudo-MOS weights), 2 images per GPU, DDP_ITERS iterations, nccl."""
    opt = _common('gpu_check_ddp', DDP_ITERS)
    opt.update({
        'model_type': 'IQASRModel', 'network_g': dict(DDP_NET), 'datasets': _datasets(work / 'data', 64, 2),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.999, 'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10 * DDP_ITERS], 'gamma': 0.5},
                  'total_iter': DDP_ITERS, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
                  'iqa_opt': {'milo': {'type': 'MILOLoss', 'loss_weight': 0.05, 'weights': 'milo-pseudomos'}}},
        'dist_params': {'backend': 'nccl', 'port': 29517}})
    opt['val']['metrics']['milo'] = {'type': 'milo-pseudomos'}
    return opt


def setup(work):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, installed or not
    import torch
    import yaml

    import iqa_plugin
    from iqa_plugin.models import lora

    iqa_plugin.register()
    work = Path(work).resolve()
    write_pairs(work / 'data')
    (work / 'lora').mkdir(parents=True, exist_ok=True)
    (work / 'ddp').mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    base = work / 'lora' / 'base_rrdb.pth'
    torch.save({'params': lora.build_network_cpu(LORA_NET).state_dict()}, base)
    files = {work / 'lora' / 'lora_bf16.yml': lora_options(work, base), work / 'ddp' / 'ddp.yml': ddp_options(work)}
    for path, opt in files.items():
        path.write_text(yaml.safe_dump(opt, sort_keys=False))
        print(f'wrote {path}')
    return files


# ---------------------------------------------------------------------------------------------- report
def log_sections(path):
    """step -> its output, from steps.log (sections start with a line ``===== step NAME =====``)."""
    sections, name = {}, None
    text = Path(path).read_text(errors='replace') if Path(path).is_file() else ''
    for line in text.splitlines(keepends=True):
        m = re.match(r'===== step (\S+) =====$', line.rstrip('\n'))
        if m:
            name = m.group(1)
            sections[name] = ''
        elif name is not None:
            sections[name] += line
    return sections


def last_json(text):
    """The last line of ``text`` that is a JSON object, or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith('{') and line.endswith('}'):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def pytest_counts(text):
    """{'passed': n, 'failed': n, 'skipped': n, ...} from pytest's summary line."""
    counts = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)', line)
        if found and ' in ' in line:
            for n, what in found:
                counts['error' if what.startswith('error') else what] = int(n)
            break
    counts['skip_reasons'] = sorted({m.strip() for m in re.findall(r'^SKIPPED \[\d+\] [^:]+:\d+: (.*)$', text, re.M)})
    return counts


def demo_figures(text):
    """The demo's last-validation table: metric -> {ours, bicubic, better}; and whether it ran on the GPU."""
    rows = {}
    for name, ours, bic, direction, verdict in re.findall(
            r'^\s+(\S+)\s+([-+\d.eE]+)\s+([-+\d.eE]+)\s+(higher|lower)\s+(better|WORSE)', text, re.M):
        rows[name] = {'ours': float(ours), 'bicubic': float(bic), 'direction': direction, 'ours_better': verdict == 'better'}
    minutes = re.search(r'Demo finished in ([\d.]+) min', text)
    return {'on_gpu': bool(re.search(r'iterations on GPU', text)), 'validation': rows,
            'minutes': float(minutes.group(1)) if minutes else None}


def training_figures(work, name):
    """Last logged loss terms and the iteration they belong to, from WORK/**/experiments/NAME/train_*.log."""
    logs = sorted(Path(work).glob(f'**/experiments/{name}/train_*.log')) if work else []
    if not logs:
        return {}
    text = logs[-1].read_text(errors='replace')
    out = {'log': str(logs[-1])}
    lines = [ln for ln in text.splitlines() if re.search(r'iter:\s*[\d,]+,', ln) and ' l_' in ln]
    if lines:
        out['last_logged_iter'] = int(re.search(r'iter:\s*([\d,]+),', lines[-1]).group(1).replace(',', ''))
        out['losses'] = {k: float(v) for k, v in re.findall(r'(l_\w+): ([-+\d.eE]+)', lines[-1])}
    blocks = [re.findall(r'# (\w+): ([-+\d.eE]+)', b) for b in text.split('Validation ')[1:]]
    blocks = [b for b in blocks if b]
    if blocks:  # the last validation with figures ("# name: value" lines)
        out['validation'] = {k: float(v) for k, v in blocks[-1]}
    for key, pattern in (('lora', r'LoRA fine-tuning: (.*)'), ('amp', r'^\s+amp: (\S+)'),
                         ('world_size', r'^\s+world_size: (\d+)'),
                         ('time', r'End of training\. Time consumed: (\S+)')):
        m = re.findall(pattern, text, re.M)
        if m:
            out[key] = m[-1].strip()
    return out


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def bench_figures(step, j):
    """Key figures of a bench's JSON line."""
    if j is None:
        return {}
    if step == 'train-step':
        keep = {'ratio': j.get('ratio'), 'ratio_within': j.get('ratio_within'), 'ms': j.get('ms'),
                'loss_ms': j.get('loss_ms'), 'step_peak_mib': j.get('step_peak_mib'), 'skipped': j.get('skipped'),
                'goal_met': (j.get('goal') or {}).get('met'), 'goal_failures': (j.get('goal') or {}).get('failures'),
                'goal_within_met': (j.get('goal_within') or {}).get('met'), 'gpu': j.get('gpu')}
    elif step == 'milo':
        keep = {k: j.get(k) for k in ('ratio', 'ratios', 'ms', 'max_score_diff', 'threads')}
    elif step == 'afine':
        keep = {k: j.get(k) for k in ('ratio', 'ratio_shared_ref', 'ratio_cached_refs', 'ours_images_per_s',
                                      'pyiqa_images_per_s', 'max_abs_diff', 'threads')}
    elif step == 'gt-sampling':
        keep = {k: j.get(k) for k in ('device', 'ratio', 'ratio_within', 'scorer_share')}
        keep['per_arch_ratio'] = {a: r.get('ratio') for a, r in (j.get('per_arch') or {}).items()}
    else:
        keep = {k: v for k, v in j.items() if _finite(v)}
    return {k: v for k, v in keep.items() if v is not None}


def step_figures(step, text, work):
    if step in ('train-step', 'milo', 'afine', 'gt-sampling'):
        return bench_figures(step, last_json(text))
    if step == 'cuda-tests':
        return pytest_counts(text)
    if step == 'demo':
        return demo_figures(text)
    if step == 'lora-bf16':
        return training_figures(work, 'gpu_check_lora_bf16')
    if step == 'ddp':
        return training_figures(work, 'gpu_check_ddp')
    return {}


def checks(step, status, figures):
    """Extra pass conditions on a step that exited 0: (status, note)."""
    if status != 'pass':
        return status, None
    if step == 'cuda-tests':
        if figures.get('failed') or figures.get('error'):
            return 'fail', 'tests failed'
        if not figures.get('passed'):
            return 'fail', 'no CUDA test ran (all skipped or none selected)'
        cuda_skips = [r for r in figures.get('skip_reasons', []) if 'cuda' in r.lower()]
        if cuda_skips:  # this machine has CUDA: a test skipped for want of it did not see the GPU
            return 'fail', 'skipped for want of CUDA on a CUDA machine: ' + '; '.join(cuda_skips)
    if step == 'demo' and not figures.get('on_gpu'):
        return 'fail', 'the demo did not train on the GPU'
    if step in ('train-step', 'milo', 'afine', 'gt-sampling') and not figures:
        return 'fail', 'no JSON line in the output'
    if step == 'train-step' and figures.get('goal_met') is False:
        return 'pass', 'goal not met: ' + '; '.join(figures.get('goal_failures') or [])
    if step in ('lora-bf16', 'ddp') and not figures.get('losses'):
        return 'fail', 'no logged losses in the training log'
    if step == 'ddp' and figures.get('world_size') != '2':
        return 'fail', f"world_size {figures.get('world_size')} in the training log, not 2"
    if step == 'lora-bf16' and figures.get('amp') != 'bf16':
        return 'fail', f"amp {figures.get('amp')} in the training log, not bf16"
    return status, None


def fmt(x):
    if isinstance(x, float):
        return f'{x:.4g}'
    if isinstance(x, dict):
        return ', '.join(f'{k} {fmt(v)}' for k, v in x.items())
    if isinstance(x, list):
        return '; '.join(fmt(v) for v in x)
    return str(x)


def summary_line(step, f):
    """One short line of the figures that matter for ``step``."""
    if step == 'train-step' and 'ratio' in f:
        parts = []
        for arch, r in f['ratio'].items():
            parts.append(f"{arch}: " + ', '.join(f'{c} {v:.3f}' for c, v in r.items() if c != 'l1'))
        return ' | '.join(parts) + f"; goal {'met' if f.get('goal_met') else 'NOT met'}"
    if step == 'cuda-tests':
        return ', '.join(f'{f[k]} {k}' for k in ('passed', 'failed', 'error', 'skipped', 'deselected') if f.get(k))
    if step == 'demo' and f.get('validation'):
        return '; '.join(f"{k} {v['ours']:.4g} vs bicubic {v['bicubic']:.4g}" for k, v in f['validation'].items())
    if step in ('lora-bf16', 'ddp') and f.get('losses'):
        return f"iter {f.get('last_logged_iter')}: " + fmt(f['losses'])
    keys = {'milo': ('ratio', 'max_score_diff'), 'afine': ('ratio', 'max_abs_diff'),
            'gt-sampling': ('ratio', 'ratio_within', 'scorer_share')}.get(step, ())
    return ', '.join(f'{k} {fmt(f[k])}' for k in keys if k in f)


def report(out, work=None, gpu=None, gpus=None, python=None):
    out = Path(out)
    rows = []
    tsv = out / 'steps.tsv'
    lines = tsv.read_text().splitlines()[1:] if tsv.is_file() else []
    sections = log_sections(out / 'steps.log')
    for line in lines:
        step, status, seconds, timeout, rc, note = (line.split('\t') + [''] * 6)[:6]
        text = sections.get(step, '')
        figures = step_figures(step, text, work) if status != 'skip' else {}
        status, extra = checks(step, status, figures)
        note = '; '.join(x for x in (note, extra) if x)
        rows.append({'step': step, 'status': status, 'seconds': int(seconds or 0), 'timeout': int(timeout or 0),
                     'rc': rc, 'note': note, 'log': f'steps.log, section {step}' if text else None,
                     'figures': figures})
    failed = [r['step'] for r in rows if r['status'] == 'fail']
    result = {'gpu': gpu, 'gpus': int(gpus) if gpus not in (None, '') else None, 'python': python,
              'total_seconds': sum(r['seconds'] for r in rows), 'passed': sum(r['status'] == 'pass' for r in rows),
              'failed': failed, 'skipped': [r['step'] for r in rows if r['status'] == 'skip'], 'steps': rows}
    (out / 'report.json').write_text(json.dumps(result, indent=1))
    md = [f'# GPU check: {gpu or "?"} x{gpus or "?"}', '',
          f"{result['passed']} passed, {len(failed)} failed, {len(result['skipped'])} skipped in "
          f"{result['total_seconds']} s (python {python or '?'}). Output of each step in steps.log; figures in report.json.", '',
          '| step | status | s | key figures | note |', '| --- | --- | ---: | --- | --- |']
    for r in rows:
        md.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {summary_line(r['step'], r['figures'])} | "
                  f"{r['note']} |".replace('\n', ' '))
    ts = next((r['figures'] for r in rows if r['step'] == 'train-step' and r['figures'].get('ratio')), None)
    if ts:
        md += ['', '## train-step: step time / L1 step, within-step ratio, peak MiB above the step start', '']
        nan = float('nan')
        for arch, ratios in ts['ratio'].items():
            peak, ms, loss, within = ({} if ts.get(k) is None else ts[k].get(arch, {})
                                      for k in ('step_peak_mib', 'ms', 'loss_ms', 'ratio_within'))
            md += [f'{arch}:', '', '| config | ms/step | / L1 | loss ms | within | peak MiB |',
                   '| --- | ---: | ---: | ---: | ---: | ---: |']
            md += [f"| {c} | {ms.get(c, nan):.1f} | {v:.3f} | {loss.get(c, nan):.1f} | {within.get(c, nan):.3f} | "
                   f"{peak.get(c, nan):.0f} |" for c, v in ratios.items()]
            md.append('')
        if ts.get('skipped'):
            md.append('skipped: ' + fmt(ts['skipped']))
    (out / 'report.md').write_text('\n'.join(md) + '\n')
    print('\n'.join(md))
    return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog='scripts/gpu_check.py', description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('setup')
    s.add_argument('work')
    r = sub.add_parser('report')
    r.add_argument('out')
    r.add_argument('--work')
    r.add_argument('--gpu')
    r.add_argument('--gpus')
    r.add_argument('--python')
    args = p.parse_args(argv)
    if args.cmd == 'setup':
        setup(args.work)
        return 0
    return report(args.out, args.work, args.gpu, args.gpus, args.python)


if __name__ == '__main__':
    sys.exit(main())
