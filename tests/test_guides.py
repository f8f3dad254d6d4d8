"""docs/guides/*.md stay true to the code: every YAML block parses with BasicSR's loader, complete option files
(and fragments merged into a minimal one) pass the option pre-flight, every loss block builds and runs, every
Python block runs offline in a temporary folder, and every relative link and anchor resolves.

A Python block whose first line is ``# not run`` is skipped (for blocks that cannot run here)."""
import copy
import inspect
import re
from pathlib import Path

import pytest
import yaml

import iqa_plugin  # noqa: F401  (shim + registries before basicsr)
from conftest import find_shared

REPO = Path(__file__).resolve().parents[1]
GUIDES = sorted((REPO / 'docs' / 'guides').glob('*.md'))
NOT_RUN = '# not run'
# ``type:`` values that name no registry entry: BasicSR's io backends, MILOLatentLoss's encoder loader
NON_REGISTRY_TYPES = {'disk', 'lmdb', 'diffusers'}
# what BasicSR 1.4.2's BaseModel accepts for train.optim_* and train.scheduler (get_optimizer, setup_schedulers)
BASICSR_OPTIMIZERS = {'Adam'}
BASICSR_SCHEDULERS = {'MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR'}

pytestmark = pytest.mark.usefixtures('one_torch_thread')


# ------------------------------------------------------------------------------------------ markdown
def fenced_blocks(path):
    """[(language, first line number of the body, body)] of the fenced code blocks of a markdown file."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if line.startswith('```'):
            if lang is None:
                lang, start, body = line[3:].strip() or 'text', i + 1, []
            else:
                out.append((lang, start, '\n'.join(body) + '\n'))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f'{path.name}: unclosed code fence from line {start - 1}'
    return out


def blocks_of(lang):
    return [pytest.param(g, n, body, id=f'{g.stem}:{n}') for g in GUIDES for la, n, body in fenced_blocks(g)
            if la == lang]


YAML_BLOCKS = blocks_of('yaml')
PYTHON_BLOCKS = blocks_of('python')


def test_guides_exist():
    names = {g.name for g in GUIDES}
    assert {'index.md', 'iqa_losses.md', 'checkpoint_selection.md', 'multigt_sampling.md', 'lora_finetuning.md',
            'evaluation.md'} <= names
    index = (REPO / 'docs' / 'guides' / 'index.md').read_text(encoding='utf-8')
    for g in names - {'index.md'}:
        assert f']({g})' in index, f'index.md does not link {g}'
    assert YAML_BLOCKS and PYTHON_BLOCKS


def load_yaml(text):
    from basicsr.utils.options import ordered_yaml

    return yaml.load(text, Loader=ordered_yaml()[0])


def plain(obj):
    """OrderedDicts of BasicSR's loader -> plain dicts (what the pre-flight gets from its own loader)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------ option files
SKELETON = {'model_type': 'IQASRModel', 'train': {}, 'val': {}}


def as_option_file(opt):
    """A complete option file as it is; a fragment merged into a minimal IQASRModel option dict."""
    from iqa_plugin.basicsr_glue.option_base import deep_merge

    return opt if 'model_type' in opt else deep_merge(SKELETON, opt)


def localise(opt, root):
    """Create, under ``root``, every file and folder the option dict names (relative paths only), so the
    pre-flight's existence checks pass: data folders, the SMA/SMP score cache and the pretrained base net."""
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and (k.startswith('dataroot') or k == 'meta_info_file'):
                    assert not Path(v).is_absolute(), f'{k}: {v} should be a relative path in a guide'
                    (root / v).mkdir(parents=True, exist_ok=True)
                elif isinstance(v, str) and k == 'scores':
                    assert not Path(v).is_absolute(), f'scores: {v} should be a relative path in a guide'
                    (root / v).parent.mkdir(parents=True, exist_ok=True)
                    (root / v).write_text('{}', encoding='utf-8')
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(opt)
    base = (opt.get('path') or {}).get('pretrain_network_g')
    if base:
        import torch

        from iqa_plugin.models.lora import build_network_cpu

        assert not Path(base).is_absolute(), f'pretrain_network_g: {base} should be a relative path in a guide'
        state = build_network_cpu(opt['network_g']).state_dict()
        (root / base).parent.mkdir(parents=True, exist_ok=True)
        torch.save({'params': state, 'params_ema': state}, root / base)


def known_types():
    from basicsr.utils.registry import (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY,
                                        MODEL_REGISTRY)

    from iqa_plugin.models.gt_sampling import GT_STRATEGIES
    from iqa_plugin.scoring import METRICS

    names = set(METRICS) | set(GT_STRATEGIES) | NON_REGISTRY_TYPES
    for reg in (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY):
        names |= {k.removesuffix('_basicsr') for k, _ in reg}
    return names


def all_types(node, where=''):
    if isinstance(node, dict):
        for k, v in node.items():
            if (k == 'type' or (k == 'model_type' and not where)) and isinstance(v, str):  # A-FINE has its own
                yield f'{where}.{k}', v
            else:
                yield from all_types(v, f'{where}.{k}')
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from all_types(v, f'{where}[{i}]')


@pytest.mark.parametrize('guide, line, text', YAML_BLOCKS)
def test_yaml_block(guide, line, text, tmp_path, monkeypatch):
    """Parses with BasicSR's loader; every type is registered; the option file passes the pre-flight."""
    from iqa_plugin.basicsr_glue.options_check import check_options

    opt = load_yaml(text)
    assert isinstance(opt, dict) and opt, f'{guide.name}:{line}: not a mapping of options'
    opt = plain(opt)
    known = known_types()
    for where, name in all_types(opt):
        parent = where.rsplit('.', 2)[-2]
        if parent.startswith('optim_'):
            assert name in BASICSR_OPTIMIZERS, f'{guide.name}:{line}: {where}: BasicSR 1.4.2 has no optimizer {name!r}'
            continue
        if parent == 'scheduler':
            assert name in BASICSR_SCHEDULERS, f'{guide.name}:{line}: {where}: BasicSR 1.4.2 has no scheduler {name!r}'
            continue
        assert name in known, f'{guide.name}:{line}: {where}: {name!r} is not registered in BasicSR or the metric table'
    full = as_option_file(copy.deepcopy(opt))
    localise(full, tmp_path)
    monkeypatch.chdir(tmp_path)
    # structure only: every type, key, direction, path and model check; weights may be downloads (A-FINE)
    check_options(full, is_train=True, resolve_weights=False)


def loss_blocks(opt):
    """(where, block) of every plugin loss block under ``train`` (``iqa_opt`` entries and ``*_opt``)."""
    from basicsr.utils.registry import LOSS_REGISTRY

    train = opt.get('train') or {}
    found = [(f'train.iqa_opt.{k}', v) for k, v in (train.get('iqa_opt') or {}).items()]
    found += [(f'train.{k}', v) for k, v in train.items() if k.endswith('_opt') and isinstance(v, dict) and 'type' in v]
    return [(w, b) for w, b in found if b.get('type') in LOSS_REGISTRY._obj_map
            and LOSS_REGISTRY.get(b['type']).__module__.startswith('iqa_plugin')]


GUIDE_LOSSES = [pytest.param(w, b, id=f'{g.stem}:{n}:{w}') for g, n, text in (p.values for p in YAML_BLOCKS)
                for w, b in loss_blocks(plain(load_yaml(text)))]


@pytest.mark.parametrize('where, block', GUIDE_LOSSES)
def test_loss_block_builds(where, block, monkeypatch):
    """Each loss block builds through BasicSR's ``build_loss`` and gives a finite value on small images.

    Weights that are not on this machine: ``pretrained: false`` where the loss has it (random weights);
    otherwise the block is skipped (its keys are still checked by test_yaml_block). A diffusers encoder is
    replaced by precomputed latents (no Stable Diffusion here)."""
    import torch
    from basicsr.losses import build_loss
    from basicsr.utils.registry import LOSS_REGISTRY

    from iqa_plugin import scoring

    shared = find_shared()
    if shared is not None:  # official MILO weights, when present
        monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(shared / 'weights' / 'milo'))
    block = dict(block)
    cls = LOSS_REGISTRY.get(block['type'])
    latent = isinstance(block.get('encoder'), dict)
    if latent:
        block['encoder'] = 'precomputed'
    name, opts = cls.metric_of(**{k: v for k, v in block.items() if k != 'type'})
    ok, why = scoring.available_offline(name, **{k: v for k, v in opts.items() if v is not None})
    if not ok:
        if 'pretrained' not in inspect.signature(cls.__init__).parameters:
            pytest.skip(f'{where}: weights not on this machine ({why[:120]})')
        block['pretrained'] = False
    loss = build_loss(block)
    torch.manual_seed(0)
    size = max(scoring.get_spec(name).min_size, 32)
    shape = (2, 4, 16, 16) if latent else (2, 3, size, size)
    pred, target = torch.rand(shape, requires_grad=True), torch.rand(shape)
    value = loss(pred, target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


# ------------------------------------------------------------------------------------------ python
@pytest.mark.parametrize('guide, line, text', PYTHON_BLOCKS)
def test_python_block_runs(guide, line, text, tmp_path, monkeypatch):
    if text.lstrip().startswith(NOT_RUN):
        pytest.skip(f'{guide.name}:{line} is marked {NOT_RUN!r}')
    monkeypatch.chdir(tmp_path)
    code = compile(text, f'{guide.name}:{line}', 'exec')
    exec(code, {'__name__': '__main__'})  # noqa: S102  (the guide's own example)


# ------------------------------------------------------------------------------------------ links
def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, spaces and '-' kept),
    spaces -> '-'."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def anchors(path):
    """Anchors of a markdown file's headings (outside code fences), with GitHub's -1, -2 for repeats."""
    seen, out, fence = {}, set(), False
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            fence = not fence
            continue
        m = None if fence else re.match(r'#{1,6}\s+(.*)', line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f'{s}-{n}')
            seen[s] = n + 1
    return out


def links(path):
    """Relative link targets of a markdown file, outside code fences and inline code."""
    out, fence = [], False
    for i, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if line.startswith('```'):
            fence = not fence
            continue
        if fence:
            continue
        for target in re.findall(r'\]\(([^)\s]+)\)', re.sub(r'`[^`]*`', '', line)):
            if not re.match(r'[a-z]+:', target):
                out.append((i, target))
    return out


def test_slug_matches_github():
    assert slug('How the mixins hook into BasicSR (1.4.2) without copying its loops') == \
        'how-the-mixins-hook-into-basicsr-142-without-copying-its-loops'
    assert slug('3. The strategies: `train.gt_sampling`') == '3-the-strategies-traingt_sampling'
    assert slug('Bench: full fine-tuning against LoRA (`iqa-plugin bench lora`)') == \
        'bench-full-fine-tuning-against-lora-iqa-plugin-bench-lora'


@pytest.mark.parametrize('guide', GUIDES, ids=[g.stem for g in GUIDES])
def test_links_resolve(guide):
    found = links(guide)
    assert found, f'{guide.name} links nothing'
    for line, target in found:
        file, _, anchor = target.partition('#')
        dest = (guide.parent / file).resolve() if file else guide
        assert dest.is_file(), f'{guide.name}:{line}: link target {target} does not exist'
        if anchor:
            assert anchor in anchors(dest), f'{guide.name}:{line}: no heading #{anchor} in {dest.name}'
    if guide.name != 'index.md':
        text = guide.read_text(encoding='utf-8')
        assert '## See also' in text and '../architecture.md#' in text, \
            f'{guide.name}: a See also section linking an architecture.md section'
