"""``iqa-plugin bench train-step``: the --quick run goes through the CLI and its JSON line has a positive finite
ratio per configuration; every requested configuration is measured or skipped with a reason (never dropped
silently), each configuration's step really computes its loss, and the VGG19 baseline is built offline."""
import json
import math

import pytest

from iqa_plugin.apps.bench import BENCHES, describe
from iqa_plugin.apps.bench import train_step_bench as tsb

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def run_cli(capsys, *args):
    from iqa_plugin.cli import dispatch

    assert dispatch(['bench', 'train-step', '--quick', '--device', 'cpu', *args]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1]), out


def test_quick_run_json_line(capsys):
    assert BENCHES['train-step'] == 'iqa_plugin.apps.bench.train_step_bench:main'
    assert describe('train-step').startswith('generator training step')
    result, out = run_cli(capsys, '--rounds', '2')
    assert result['bench'] == 'train-step' and result['device'] == 'cpu' and result['rounds'] == 2
    assert set(result['ratio']) == {'rrdb', 'swinir'} == set(result['per_arch'])
    for arch, ratios in result['ratio'].items():
        assert list(ratios) == result['configs'] and ratios['l1'] == 1.0
        for config, r in ratios.items():
            assert isinstance(r, float) and math.isfinite(r) and r > 0, (arch, config, r)
            assert math.isfinite(result['ratio_paired'][arch][config]) and result['ms'][arch][config] > 0
            assert math.isfinite(result['ratio_within'][arch][config]) and result['ratio_within'][arch][config] > 0
            assert 0 < result['loss_ms'][arch][config] < result['ms'][arch][config]
            assert math.isfinite(result['ratio_cpu'][arch][config]) and result['cpu_ms'][arch][config] > 0
        assert result['per_arch'][arch]['batch'] == 2 and result['per_arch'][arch]['size'] == 32
    assert set(result['goal']) >= {'met', 'failures', 'max_ratio'} and result['goal']['applies'] is False
    assert set(result['goal_within']) >= {'met', 'failures'}
    assert 'step_peak_mib' not in result  # CUDA only
    assert any(line.startswith('  vgg19') for line in out)


def test_no_config_is_dropped_silently(capsys, monkeypatch, shared_dir):
    # without the official MILO file (conftest isolates the weights folders): skipped, with the reason
    result, out = run_cli(capsys, '--arch', 'rrdb')
    assert set(result['configs']) | set(result['skipped']) == set(tsb.CONFIGS)
    assert set(result['configs']) == set(result['ratio']['rrdb'])
    assert list(result['skipped']) == ['milo'] and 'IQA_PLUGIN_WEIGHTS_DIR' in result['skipped']['milo']
    assert any(line.startswith('skipped milo') for line in out)
    # with it (the project's shared weights): measured, not skipped
    folder = shared_dir / 'weights' / 'milo'
    if not (folder / 'MILO.pth').is_file():
        pytest.skip(f'official MILO weights not in {folder}')
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(folder))
    result, _ = run_cli(capsys, '--arch', 'swinir', '--configs', 'milo')
    assert result['configs'] == ['l1', 'milo'] and result['skipped'] == {}
    assert result['ratio']['swinir']['milo'] > 0


def test_each_config_computes_its_loss():
    """One step of each configuration's model logs its loss term: none is built without its loss."""
    import torch

    configs = [c for c in tsb.CONFIGS if c != 'milo']
    models = tsb.build_models(tsb.TINY_NETWORKS['rrdb'], configs, torch.device('cpu'), ema=0.999)
    data = tsb.make_batch(1, 32, 4, torch.device('cpu'))
    expected = {'l1': set(), 'vgg19': {'l_percep'}, 'milo-pseudomos': {'l_milo'}, 'relational': {'l_relational'},
                'nr-lite': {'l_nr'}}
    for c, model in models.items():
        model.feed_data(data)
        model.optimize_parameters(1)
        assert set(model.log_dict) == {'l_pix'} | expected[c], c
        assert all(math.isfinite(v) for v in model.log_dict.values())
    vgg = models['vgg19'].cri_perceptual.vgg
    assert list(vgg.vgg_net.named_children())[-1][0] == 'conv5_4'  # ESRGAN's layer, built without any file


def test_bad_options_fail_in_one_line(capsys):
    for args in (['--configs', 'lpips'], ['--size', '30'], ['--rounds', '0']):
        with pytest.raises(SystemExit) as e:
            tsb.main(['--quick', '--device', 'cpu', *args])
        assert e.value.code == 2
    assert 'unknown config(s) lpips' in capsys.readouterr().err
