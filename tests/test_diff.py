"""``iqa-plugin diff`` and ``val.axis_report``: what changed between two sets of outputs, axis by axis.

* held-out photos (scikit-image's bundled ones; the relational network was trained on CBSD68 only) blurred, noised,
  JPEG-compressed and darkened with OpenCV / PIL directly (not the distortion engine): ``diff --json`` names the
  applied axis as the largest, with the right sign and above its noise floor; an untrained network does not;
* identical folders give exactly 0 and 'identical'; a 1-pixel shift stays below the noise floor;
* bad input (unmatched names, sizes, too small, one image in a folder, conflicting options) is one line, status 2,
  nothing written; a run that fails half-way leaves --out as it was;
* ``--nets`` with BasicSR net_g files and a LoRA adapter (an adapter at its initialisation is its base: identical);
* ``val.axis_report`` in a tiny IQASRModel training: the log's sentence, TensorBoard's ``axes/<axis>`` scalars and
  ``axes/report`` figure (read back with EventAccumulator), references on disk, and the pre-flight's one-line errors.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import make_sr_folder, write_tiny_options

pytestmark = pytest.mark.usefixtures('one_torch_thread')

PHOTOS = ('astronaut', 'coffee', 'rocket', 'chelsea')
SIDE = 128


def cli(capsys, *args):
    from iqa_plugin.cli import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def photo(name, side=SIDE, offset=(0, 0)):
    """The centre ``side`` px crop of a scikit-image photo (uint8 RGB), moved by ``offset`` pixels."""
    import skimage.data

    img = getattr(skimage.data, name)()
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    h, w = img.shape[:2]
    y, x = (h - side) // 2 + offset[0], (w - side) // 2 + offset[1]
    return np.ascontiguousarray(img[y:y + side, x:x + side])


def blur(a):
    return cv2.GaussianBlur(a, (0, 0), 1.5)


def noise(a):
    rng = np.random.default_rng(0)
    return np.clip(a + rng.normal(0, 10, a.shape), 0, 255).astype(np.uint8)


def jpeg(a):
    ok, buf = cv2.imencode('.jpg', a[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 15])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def darken(a):
    from PIL import Image, ImageEnhance

    return np.asarray(ImageEnhance.Brightness(Image.fromarray(a)).enhance(0.7))


OPS = {'blur': (blur, 'sharpness', -1), 'noise': (noise, 'noise', +1), 'jpeg': (jpeg, 'compression', +1),
       'darken': (darken, 'brightness', -1)}


def write(folder, name, rgb):
    folder.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(folder / name), np.ascontiguousarray(rgb[..., ::-1]))


@pytest.fixture(scope='module')
def photo_sets(tmp_path_factory):
    """A/ (the photos) and one folder per operation, plus shift/ (the crops moved by one pixel)."""
    root = tmp_path_factory.mktemp('photos')
    for name in PHOTOS:
        a = photo(name)
        write(root / 'A', f'{name}.png', a)
        for op, (fn, _, _) in OPS.items():
            write(root / op, f'{name}.png', fn(a))
        write(root / 'shift', f'{name}.png', photo(name, offset=(0, 1)))
    return root


@pytest.fixture(scope='module')
def random_relational(tmp_path_factory):
    from iqa_plugin.archs.relational_arch import RelationalIQANet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('rel') / 'random_relational.pth'
    torch.save(RelationalIQANet().state_dict(), path)
    return path


def named_axis(result):
    """(largest axis, its mean, whether it is above the floor) of a ``diff --json`` result."""
    axes = result['axes']
    top = max(axes, key=lambda k: abs(axes[k]))
    return top, axes[top], result['changed'][top]


# ------------------------------------------------------------------------------------------ held-out photos
@pytest.mark.parametrize('op', list(OPS))
def test_diff_names_the_applied_axis(capsys, photo_sets, op):
    _, axis, sign = OPS[op]
    code, out, err = cli(capsys, 'diff', photo_sets / 'A', photo_sets / op, '--json', '--device', 'cpu')
    assert code == 0, err
    r = last_json(out)
    top, value, changed = named_axis(r)
    assert (top, np.sign(value), changed) == (axis, sign, True), r['axes']
    assert r['images'] == len(PHOTOS) and set(r['per_image']) == {f'{n}.png' for n in PHOTOS}
    assert r['sentence'].startswith('B is ') and f'({axis} ' in r['sentence'].split(';')[0]
    assert abs(sum(r['share'].values()) - 1) < 1e-6
    for entry in r['per_image'].values():  # every image on its own names the axis too
        assert entry['moved'] and entry['moved'][0][0] == axis and np.sign(entry['moved'][0][1]) == sign


def test_untrained_relational_net_fails_the_same_check(capsys, photo_sets, random_relational):
    """The control: with an untrained relational network no operation is named (largest axis, sign, above floor)."""
    named = []
    for op, (_, axis, sign) in OPS.items():
        code, out, err = cli(capsys, 'diff', photo_sets / 'A', photo_sets / op, '--json', '--device', 'cpu',
                             '--weights', random_relational)
        assert code == 0, err
        top, value, changed = named_axis(last_json(out))
        named.append((top, np.sign(value), changed) == (axis, sign, True))
    assert not any(named)


def test_identical_is_exactly_zero_and_a_shift_stays_below_the_floor(capsys, photo_sets):
    code, out, err = cli(capsys, 'diff', photo_sets / 'A', photo_sets / 'A', '--json')
    assert code == 0, err
    r = last_json(out)
    assert r['identical'] and all(v == 0.0 for v in r['axes'].values()) and not any(r['changed'].values())
    assert r['sentence'] == 'B is identical to A (every map is exactly 0)'
    code, out, err = cli(capsys, 'diff', photo_sets / 'A', photo_sets / 'shift', '--json')
    r = last_json(out)
    assert not r['identical'] and not any(r['changed'].values()), r['axes']
    assert 'differ on no axis above its noise floor' in r['sentence']


def test_ref_scores_out_figures_and_text(capsys, photo_sets, tmp_path):
    out_dir = tmp_path / 'figs'
    code, out, err = cli(capsys, 'diff', photo_sets / 'A', photo_sets / 'blur', '--ref', photo_sets / 'A', '--out',
                         out_dir, '--json')
    assert code == 0, err
    r = last_json(out)
    ref = r['reference']
    assert ref['relational_a'] == 0.0 and ref['relational_b'] < -ref['score_floor'] and ref['closer'] == 'A'
    assert 'B is further from the reference than A' in r['sentence']
    lines = out.splitlines()
    words = next(i for i, ln in enumerate(lines) if ln.startswith('B is '))
    table = next(i for i, ln in enumerate(lines) if ln.startswith('sharpness'))
    assert words < table  # the words first, then the table
    assert lines[words].startswith('B is blurrier (sharpness -') and lines[words].endswith('.')
    assert lines[table].rstrip().endswith('yes')
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted([f'{n}_diff.png' for n in PHOTOS] + ['axes.png', 'summary.json'])
    assert sorted(r['files']) == sorted(str(out_dir / n) for n in names)
    fig = cv2.imread(str(out_dir / 'chelsea_diff.png'))
    assert fig is not None and fig.shape[1] > 3 * 150  # A, B and at least one map
    assert json.loads((out_dir / 'summary.json').read_text())['axes'] == r['axes']


def test_two_image_files_and_basicsr_suffixes(capsys, photo_sets, tmp_path):
    code, out, err = cli(capsys, 'diff', photo_sets / 'A' / 'coffee.png', photo_sets / 'noise' / 'coffee.png', '--json')
    assert code == 0, err
    assert named_axis(last_json(out))[:1] == ('noise',)
    for side, it in (('a', 250), ('b', 1000)):  # BasicSR's visualization names: <name>_<iter>.png
        for name in PHOTOS[:2]:
            src = photo_sets / ('A' if side == 'a' else 'blur') / f'{name}.png'
            write(tmp_path / side, f'{name}_{it}.png', cv2.imread(str(src))[..., ::-1])
    code, out, err = cli(capsys, 'diff', tmp_path / 'a', tmp_path / 'b', '--json')
    assert code == 0, err
    r = last_json(out)
    assert set(r['per_image']) == {f'{n}_250.png' for n in PHOTOS[:2]} and named_axis(r)[0] == 'sharpness'


# ------------------------------------------------------------------------------------------ bad input
def _bad_inputs(root, photo_sets):
    write(root / 'one', 'chelsea.png', photo('chelsea'))
    for name in PHOTOS:
        write(root / 'renamed', f'x_{name}.png', photo(name))
        write(root / 'big', f'{name}.png', photo(name, side=SIDE + 8))
    write(root / 'tiny', 'a.png', np.zeros((12, 12, 3), np.uint8))
    write(root / 'tiny', 'b.png', np.zeros((12, 12, 3), np.uint8))
    a = photo_sets / 'A'
    return {
        'unmatched names': ([a, root / 'renamed'], 'do not match by file name'),
        'different sizes': ([a, root / 'big'], 'size mismatch for'),
        'too small': ([root / 'tiny' / 'a.png', root / 'tiny' / 'b.png'], "smaller than the relational network's"),
        'one image': ([a, root / 'one'], 'holds one image'),
        'missing': ([a, root / 'nope'], 'not found'),
        'one path': ([a], 'diff needs two folders or images'),
        'folder and file': ([a, a / 'chelsea.png'], 'both be folders or both be image files'),
        'ref size': ([a, photo_sets / 'blur', '--ref', root / 'big'], 'size mismatch for'),
        'ref names': ([a, photo_sets / 'blur', '--ref', root / 'renamed'], 'matches a GT name'),
        'nets and paths': ([a, a, '--nets', 'x.pth', 'y.pth'], 'not both'),
        'nets without opt': (['--nets', a / 'chelsea.png', a / 'coffee.png'], 'needs -opt'),
        'opt without nets': ([a, a, '-opt', 'x.yml'], 'options of --nets'),
        'no such device': ([a, photo_sets / 'blur', '--device', 'cuda:99'], '--device cuda:99'),
    }


def test_bad_input_is_one_line_and_writes_nothing(capsys, photo_sets, tmp_path):
    for label, (args, message) in _bad_inputs(tmp_path / 'in', photo_sets).items():
        out_dir = tmp_path / 'out' / label.replace(' ', '_')
        code, out, err = cli(capsys, 'diff', *args, '--out', out_dir)
        assert code == 2, (label, err)
        assert err.startswith('iqa-plugin: error: ') and len(err.strip().splitlines()) == 1, (label, err)
        assert message in err, (label, err)
        assert not out_dir.exists(), label


def test_failed_run_leaves_out_as_it_was(capsys, photo_sets, tmp_path, monkeypatch):
    from iqa_plugin.scoring import axes as axis_diff

    out_dir = tmp_path / 'figs'
    out_dir.mkdir()
    (out_dir / 'axes.png').write_bytes(b'earlier run')
    (out_dir / 'keep.txt').write_text('mine')
    calls = []
    real = axis_diff.AxisDiff.add

    def add(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise FileNotFoundError('third image unreadable')  # e.g. removed while the command ran
        return real(self, *a, **k)

    monkeypatch.setattr(axis_diff.AxisDiff, 'add', add)
    code, out, err = cli(capsys, 'diff', photo_sets / 'A', photo_sets / 'blur', '--out', out_dir)
    assert code == 2 and 'third image unreadable' in err
    assert sorted(p.name for p in out_dir.iterdir()) == ['axes.png', 'keep.txt']
    assert (out_dir / 'axes.png').read_bytes() == b'earlier run'


# ------------------------------------------------------------------------------------------ words
def test_sentence_words_signs_and_floor():
    from iqa_plugin.scoring.axes import AXES, FLOOR, AxisDiff, describe_axis, sentence

    d = AxisDiff()
    maps = np.zeros((len(AXES), 8, 8), np.float32)
    maps[AXES.index('sharpness')] = -0.41
    maps[AXES.index('noise')] = FLOOR['noise'] * 1.5
    maps[AXES.index('brightness')] = FLOOR['brightness'] * 0.5  # below its floor: unchanged
    d.add_maps('x', maps)
    s = d.summary()
    assert s['changed'] == {a: a in ('sharpness', 'noise') for a in AXES}
    assert sentence(s) == (f'B is blurrier (sharpness -0.41) and slightly noisier (noise +{FLOOR["noise"] * 1.5:.2f}) '
                           'than A; other axes unchanged')
    assert describe_axis('brightness', -0.53) == 'much darker (brightness -0.53)'
    assert describe_axis('compression', 0.4) == 'more compressed (compression +0.40)'
    assert describe_axis('compression', 0.3) == 'slightly more compressed (compression +0.30)'  # floor 0.155
    assert s['per_image']['x']['moved'] == [['sharpness', pytest.approx(-0.41)],
                                            ['noise', pytest.approx(FLOOR['noise'] * 1.5)]]


# ------------------------------------------------------------------------------------------ --nets
def _two_checkpoints(tmp_path):
    from basicsr.archs.srresnet_arch import MSRResNet

    data = make_sr_folder(tmp_path / 'data', n=2, size=64)
    opt = write_tiny_options(tmp_path / 'nets.yml', data, name='nets')
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = MSRResNet(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4)
        paths.append(tmp_path / f'net_g_{seed}.pth')
        torch.save({'params': net.state_dict()}, paths[-1])
    return opt, paths


def test_nets_compares_two_checkpoints_and_a_lora_adapter(capsys, tmp_path):
    from basicsr.archs.srresnet_arch import MSRResNet

    from iqa_plugin.models import lora

    opt, (net0, net1) = _two_checkpoints(tmp_path)
    code, out, err = cli(capsys, 'diff', '--nets', net0, net1, '-opt', opt, '--json', '--out', tmp_path / 'figs')
    assert code == 0, err
    r = last_json(out)
    assert r['images'] == 2 and not r['identical'] and r['val'] == 'tiny_val'
    assert set(r['per_image']) == {'img00.png', 'img01.png'} and 'relational_a' in r['per_image']['img00.png']
    assert 'reference' in r and (tmp_path / 'figs' / 'img00_diff.png').is_file()

    # a LoRA adapter of net_g_0 at its initialisation (B = 0) computes what its base does
    network_g = {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 4}
    net = MSRResNet(**{k: v for k, v in network_g.items() if k != 'type'})
    base = torch.load(net0, weights_only=True)['params']
    net.load_state_dict(base)
    names = lora.inject_lora(net, rank=2, alpha=2, target_modules=[r'body\.0\.conv1', r'conv_hr'])
    meta = lora.make_meta(net, names, {'rank': 2, 'alpha': 2, 'dropout': 0.0}, network_g, base, str(net0), 'params')
    lora.save_adapter(tmp_path / 'adapter_init.pth', net, meta)
    code, out, err = cli(capsys, 'diff', '--nets', net0, tmp_path / 'adapter_init.pth', '-opt', opt, '--json')
    assert code == 0, err
    assert last_json(out)['identical'] and 'LoRA adapter (rank 2)' in out
    with torch.no_grad():
        for _, layer in lora.lora_layers(net):
            layer.lora_B['default'].weight.normal_(0, 0.5)
    lora.save_adapter(tmp_path / 'adapter_trained.pth', net, meta)
    code, out, err = cli(capsys, 'diff', '--nets', net0, tmp_path / 'adapter_trained.pth', '-opt', opt, '--json')
    assert code == 0, err
    assert not last_json(out)['identical']
    # an adapter of another base is refused in one line
    code, out, err = cli(capsys, 'diff', '--nets', net1, tmp_path / 'adapter_trained.pth', '-opt', opt)
    assert code == 0  # the base is the one recorded in the adapter, whichever NET_A is
    meta_other = dict(meta, base_path=str(net1))
    lora.save_adapter(tmp_path / 'adapter_wrong_base.pth', net, meta_other)
    code, out, err = cli(capsys, 'diff', '--nets', net0, tmp_path / 'adapter_wrong_base.pth', '-opt', opt)
    assert code == 2 and 'trained on another base' in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(capsys, 'diff', '--nets', net0, net1, '-opt', opt, '--val', 'nope')
    assert code == 2 and "no validation set named 'nope'" in err
    bad = tmp_path / 'bad.yml'
    for old, new, message in (('type: MSRResNet', 'type: NoSuchNet', "unknown network type 'NoSuchNet'"),
                              ('num_block: 1', 'num_block: 1, no_such_arg: 2', 'no_such_arg'),
                              ('num_feat: 8', 'num_feat: 16', 'does not match MSRResNet')):
        bad.write_text(opt.read_text().replace(old, new))
        code, out, err = cli(capsys, 'diff', '--nets', net0, net1, '-opt', bad, '--out', tmp_path / 'never')
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (old, err)
        assert not (tmp_path / 'never').exists()


# ------------------------------------------------------------------------------------------ val.axis_report
def _events(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize('against', ['previous', 'best'])
def test_axis_report_in_training_log_and_tensorboard(tmp_path, tiny_sr, against):
    import os
    import subprocess
    import sys

    from iqa_plugin.labels.distortions import AXES

    report = f'  axis_report: {{against: {against}, max_memory_mb: {0 if against == "best" else 64}}}'
    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, name=f'axis_{against}', iters=6, val_freq=2, tb='true',
                             extra_val='  select_by: psnr\n' + report)
    # a process of its own: BasicSR's root logger writes to the log file of the first run in a process
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.train', '-opt', str(opt)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / 'experiments' / f'axis_{against}'
    log = '\n'.join(p.read_text() for p in exp.glob('train_*.log'))
    lines = [ln for ln in log.splitlines() if 'Axis report tiny_val' in ln]
    assert 'no reference yet' in lines[0] and '@ iter 2' in lines[0]
    reports = [ln for ln in lines[1:] if f'({against})' in ln]
    assert len(reports) == 2, lines  # iter 4 against 2 and iter 6 against 4 (each a new best in this run, or not)
    assert 'iter 4 ' in reports[0] and ('iter 2 ' in reports[0]) and '[4 images]' in reports[0]
    acc = _events(tmp_path / 'tb_logger' / f'axis_{against}')
    for axis in AXES:
        steps = [e.step for e in acc.Scalars(f'axes/{axis}')]
        assert steps == [4, 6], (axis, steps)
    images = acc.Images('axes/report')
    assert [e.step for e in images] == [4, 6]
    fig = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert fig is not None and fig.shape[0] > 200 and fig.shape[1] > 400
    if against == 'best':  # max_memory_mb 0: every reference output is a file
        files = list((exp / 'axis_report').rglob('*.npy'))
        assert len(files) == 4 and not list((exp / 'axis_report').rglob('*.tmp*'))


def test_axis_report_under_ddp_reports_once_on_rank_0(tmp_path, tiny_sr):
    """Two processes (gloo on the CPU): the run ends (rank 1 waits while rank 0 validates and reports), rank 0's log
    has the reports, TensorBoard the scalars, and the reference outputs are on disk (max_memory_mb: 0)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    opt = write_tiny_options(tmp_path / 'ddp.yml', tiny_sr, name='ddp_axis', iters=4, val_freq=2, tb='true',
                             extra_val='  axis_report: {against: previous, max_memory_mb: 0}')
    torchrun = Path(sys.executable).parent / 'torchrun'
    r = subprocess.run([str(torchrun), '--nproc_per_node=2', f'--master_port={port}', '--master_addr=127.0.0.1',
                        '-m', 'iqa_plugin.train', '-opt', str(opt), '--launcher', 'pytorch'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    exp = tmp_path / 'experiments' / 'ddp_axis'
    log = '\n'.join(p.read_text() for p in exp.glob('train_*.log'))
    assert log.count('Axis report tiny_val') == 2 and 'iter 4 ' in log
    assert len(list((exp / 'axis_report').rglob('*.npy'))) == 4  # one reference: 4 validation images
    assert [e.step for e in _events(tmp_path / 'tb_logger' / 'ddp_axis').Scalars('axes/noise')] == [4]


def test_axis_report_scalars_follow_the_outputs():
    """The report compares the stored reference with the current outputs: unchanged outputs give exactly 0,
    darker outputs a negative brightness (the library hook without a training loop)."""
    from iqa_plugin.models.axis_report import AxisReport

    x = torch.from_numpy(photo('chelsea', 64).transpose(2, 0, 1).astype(np.float32) / 255)[None]
    rep = AxisReport({'against': 'previous', 'max_memory_mb': 1}, root='/nonexistent/never/written', device='cpu')
    rep.begin('v')
    rep.image('v', 0, x)
    assert rep.end('v', 1, None, promote=True) is None
    rep.begin('v')
    rep.image('v', 0, x.clone())
    s = rep.end('v', 2, None, promote=True)
    assert s['identical'] and all(v == 0 for v in s['axes'].values())
    rep.begin('v')
    rep.image('v', 0, x * 0.6)
    s = rep.end('v', 3, None, promote=True)
    assert s['changed']['brightness'] and s['axes']['brightness'] < -0.1


def test_every_iqa_model_has_the_axis_report():
    """Every model the pre-flight accepts IQA blocks for (``iqa_options``) reports: the IQA, multi-GT and LoRA ones."""
    from basicsr.utils.registry import MODEL_REGISTRY

    from iqa_plugin.models import nriqa_finetune_model as ft
    from iqa_plugin.models.axis_report import AxisReportMixin
    from iqa_plugin.models.iqa_mixins import IQAModelMixin, SelectionMixin

    mro = IQAModelMixin.__mro__
    assert mro.index(AxisReportMixin) < mro.index(SelectionMixin)  # the report reads the best before it changes
    models = [c for n, c in MODEL_REGISTRY if getattr(c, 'iqa_options', False)]
    assert len(models) >= 8
    lora_models = [ft.NRIQAFinetuneSRModel, ft.NRIQAFinetuneGANModel, ft.NRIQAFinetuneMultiGTSRModel,
                   ft.NRIQAFinetuneMultiGTGANModel]  # what the NRIQAFinetuneModel factory builds
    for cls in [c for c in models if c is not ft.NRIQAFinetuneModel] + lora_models:
        assert issubclass(cls, AxisReportMixin), cls.__name__


@pytest.mark.parametrize('block, message', [
    ('{against: latest}', 'val.axis_report.against must be one of previous, best'),
    ('{against: previous, every: 2}', "unknown key 'every' in val.axis_report"),
    ('{against: best}', 'needs val.select_by'),
    ('{max_memory_mb: -1}', 'max_memory_mb must be a number >= 0'),
    ('[previous]', 'val.axis_report must be a mapping'),
])
def test_preflight_refuses_bad_axis_report(tmp_path, tiny_sr, block, message):
    from iqa_plugin.basicsr_glue.options_check import OptionError, check_option_file

    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, extra_val=f'  axis_report: {block}')
    with pytest.raises(OptionError, match=message) as e:
        check_option_file(opt)
    assert '\n' not in str(e.value)
    good = write_tiny_options(tmp_path / 'good.yml', tiny_sr, extra_val='  axis_report: {against: previous}')
    check_option_file(good)
    stock = write_tiny_options(tmp_path / 'stock.yml', tiny_sr, extra_val='  axis_report: true')
    stock.write_text(stock.read_text().replace('model_type: IQASRModel', 'model_type: SRModel'))
    with pytest.raises(OptionError, match=r'val.axis_report is read only by the plugin.s IQA models'):
        check_option_file(stock)
