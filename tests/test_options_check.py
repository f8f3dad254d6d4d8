"""The option pre-flight check (``iqa_plugin.basicsr_glue.options_check``): weights resolved before anything is
written, blocks only the IQA models read, messages with the closest names, ``better`` against the table.

Downloads are off in tests (conftest: ``IQA_PLUGIN_OFFLINE=1``, an empty ``TORCH_HOME``), so the official
MILO, A-FINE, CLIP and pyiqa weights are missing unless a test points ``IQA_PLUGIN_WEIGHTS_DIR`` at them.
"""
import re
from pathlib import Path

import pytest
import yaml

from conftest import write_tiny_options

REPO = Path(__file__).resolve().parents[1]
MILO_URL = 'https://github.com/ugurcogalan06/MILO/raw/main/weights/MILO.pth'
# the README's validator snippet, which needs the official MILO weights (not shipped)
README_MILO = '    milo: {type: calculate_milo, better: lower}'


def check(opt, **kwargs):
    from iqa_plugin.basicsr_glue.options_check import check_options
    return check_options(opt, **kwargs)


def error_of(opt, **kwargs):
    """The OptionError message for ``opt`` (fails the test when the check passes); always one line."""
    from iqa_plugin.basicsr_glue.options_check import OptionError
    with pytest.raises(OptionError) as e:
        check(opt, **kwargs)
    msg = str(e.value)
    assert '\n' not in msg
    return msg


def iqa(**sections):
    return {'model_type': 'IQASRModel', **sections}


def metric(block, model='IQASRModel', **val):
    return {'model_type': model, 'val': {'metrics': {'m': block}, **val}}


def loss(block, model='IQASRModel'):
    return {'model_type': model, 'train': {'iqa_opt': {'l': block}}}


# ------------------------------------------------------------------------------------------ shipped files
# checked with their data roots pointed at a set made at test time (tests/test_multigt_options.py, test_lora.py)
_DATA_BOUND = ('options/train/multigt', 'options/train/lora', 'options/repro')  # lora: test_lora.py, repro: test_repro_options.py


def _shipped_option_files():
    # templates are checked through their writer below; `_*.yml` are bases, checked through the files using them
    return sorted(str(p.relative_to(REPO)) for d in ('options', 'iqa_plugin/configs') for p in (REPO / d).rglob('*.yml')
                  if '${' not in p.read_text() and not p.name.startswith('_')
                  and not str(p.relative_to(REPO)).startswith(_DATA_BOUND))


def _check_shipped(opt):
    """Full check; where it fails only for weights that are not on this machine, the structure check."""
    from iqa_plugin.basicsr_glue.options_check import OptionError
    try:
        check(opt)
    except OptionError as e:
        assert 'not available' in str(e), str(e)  # a missing download, not a wrong entry or key
        check(opt, resolve_weights=False)


@pytest.mark.parametrize('path', _shipped_option_files())
def test_shipped_option_files_pass(path, shared_dir, monkeypatch):
    from iqa_plugin.basicsr_glue.options_check import load_yaml
    monkeypatch.chdir(REPO)  # option files use paths relative to the repository root
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(shared_dir / 'weights' / 'milo'))  # official MILO weights
    opt = load_yaml(path)
    for k, v in (opt.get('path') or {}).items():  # outputs of an earlier stage (relational stage 1)
        if isinstance(v, str) and v.startswith('experiments/'):
            opt['path'][k] = None
    _check_shipped(opt)


def test_shipped_swinir_milo_options_resolve_official_weights(shared_dir, monkeypatch):
    """With the official MILO file the full check passes; without it the check names the file."""
    from iqa_plugin.basicsr_glue.options_check import check_option_file
    monkeypatch.chdir(REPO)
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(shared_dir / 'weights' / 'milo'))
    check_option_file('options/train/train_swinir_x4_milo.yml')
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(shared_dir / 'data'))
    with pytest.raises(ValueError, match='train.iqa_opt.milo .MILOLoss.: .*MILO.pth'):
        check_option_file('options/train/train_swinir_x4_milo.yml')


@pytest.mark.parametrize('arch', ['swinir', 'rrdb'])
def test_demo_options_pass_with_weights(arch, tmp_path):
    from iqa_plugin.apps import demo
    from iqa_plugin.basicsr_glue.options_check import check_option_file
    path = demo.write_options(tmp_path, arch=arch, iters=10)
    opt = check_option_file(path)  # the demo uses only shipped weights: resolved for real
    assert opt['train']['iqa_opt'], 'the demo should carry a plugin loss'


# ------------------------------------------------------------------------------------------ 1. weights
def test_readme_milo_validator_without_official_weights(tmp_path, tiny_sr, empty_weights_dir):
    opt = yaml.safe_load(write_tiny_options(tmp_path / 'o.yml', tiny_sr, extra_metrics=README_MILO).read_text())
    msg = error_of(opt)
    assert msg.startswith('val.metrics.milo (calculate_milo): ')
    assert 'MILO.pth' in msg and MILO_URL in msg
    assert str(empty_weights_dir / 'MILO.pth') in msg  # the folders searched
    assert str(tmp_path / 'torch_home') in msg
    check(opt, resolve_weights=False)  # the structure is fine


def test_readme_milo_validator_with_official_weights(tmp_path, tiny_sr, shared_dir, monkeypatch):
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(shared_dir / 'weights' / 'milo'))
    opt = yaml.safe_load(write_tiny_options(tmp_path / 'o.yml', tiny_sr, extra_metrics=README_MILO).read_text())
    check(opt)


@pytest.mark.parametrize('block, where, file', [
    ({'type': 'MILOLoss', 'loss_weight': 0.1}, 'train.iqa_opt.l (MILOLoss)', 'MILO.pth'),
    ({'type': 'MILOLatentLoss'}, 'train.iqa_opt.l (MILOLatentLoss)', 'MILO_latent.pth'),
    ({'type': 'AFINELoss'}, 'train.iqa_opt.l (AFINELoss)', 'afine.pth'),
    ({'type': 'NRIQALoss', 'metric': 'musiq'}, 'train.iqa_opt.l (NRIQALoss)', 'musiq_koniq'),
])
def test_loss_weights_resolved(block, where, file, empty_weights_dir):
    msg = error_of(loss(block))
    assert msg.startswith(where + ': ') and file in msg and 'https://' in msg and str(empty_weights_dir) in msg


@pytest.mark.parametrize('block', [
    {'type': 'MILOLoss', 'weights': 'milo-pseudomos'}, {'type': 'RelationalLoss'},
    {'type': 'NRIQALoss', 'metric': 'nr-lite'}, {'type': 'NRIQALoss', 'metric': 'musiq', 'pretrained': False},
])
def test_losses_with_shipped_or_no_weights_pass(block):
    check(loss(block))


def test_explicit_weights_path_must_exist(tmp_path):
    msg = error_of(loss({'type': 'RelationalLoss', 'weights_path': str(tmp_path / 'no.pth')}))
    assert msg.startswith('train.iqa_opt.l (RelationalLoss): ') and str(tmp_path / 'no.pth') in msg
    msg = error_of(metric({'type': 'nr-lite', 'weights_path': str(tmp_path / 'no.pth')}))
    assert msg.startswith('val.metrics.m (nr-lite): ') and 'not found' in msg


@pytest.mark.parametrize('block, file', [
    ({'type': 'calculate_iqa', 'metric': 'milo'}, 'MILO.pth'),
    ({'type': 'milo'}, 'MILO.pth'),
    ({'type': 'calculate_afine'}, 'afine.pth'),
    ({'type': 'calculate_nriqa', 'metric': 'topiq_nr'}, 'topiq'),
    ({'type': 'musiq'}, 'musiq'),
])
def test_validator_weights_resolved(block, file, empty_weights_dir):
    msg = error_of(metric(block))
    assert msg.startswith(f"val.metrics.m ({block['type']}): ") and file in msg and 'https://' in msg


def test_scorer_blocks_under_train(empty_weights_dir):
    """``scorer:`` sub-blocks (GT selection strategies) name a table metric; their weights are resolved."""
    ok = iqa(train={'gt_sampling': {'type': 'amo', 'scorer': {'type': 'nr-lite'}}})
    check(ok)
    msg = error_of(iqa(train={'gt_sampling': {'type': 'amo', 'scorer': 'relational'}}))
    assert msg.startswith('train.gt_sampling') and "'relational' is a full-reference metric" in msg
    check(iqa(train={'selector': {'nested': [{'scorer': {'type': 'nr-lite', 'pretrained': False}}]}}))
    msg = error_of(iqa(train={'gt_sampling': {'type': 'amo', 'scorer': {'type': 'musiq'}}}))
    assert msg.startswith('train.gt_sampling.scorer (musiq): ') and 'musiq_koniq' in msg
    msg = error_of(iqa(train={'gt_sampling': {'type': 'amo', 'scorer': {'type': 'nr-lit'}}}))
    assert "unknown scorer type 'nr-lit' in train.gt_sampling.scorer; did you mean nr-lite?" in msg
    msg = error_of(iqa(train={'gt_sampling': {'type': 'amo', 'scorer': {'type': 'nr-lite', 'bogus': 1}}}))
    assert "unknown key 'bogus' in train.gt_sampling.scorer (nr-lite)" in msg


def test_network_weights_resolved(empty_weights_dir, tmp_path):
    msg = error_of({'network_g': {'type': 'MILO', 'weights': 'milo'}})
    assert msg.startswith('network_g (MILO): ') and 'MILO.pth' in msg and MILO_URL in msg
    check({'network_g': {'type': 'MILO', 'weights': None}})  # random initialisation
    check({'network_g': {'type': 'MILO', 'weights': 'milo-pseudomos'}})  # shipped
    msg = error_of({'network_afine': {'type': 'AFINE', 'weights': 'none'}})  # the default CLIP is still loaded
    assert 'ViT-B-32.pt' in msg
    msg = error_of({'network_g': {'type': 'MILO', 'weights_path': str(tmp_path / 'x.pth')}})
    assert msg == f"network_g.weights_path: file not found: {tmp_path / 'x.pth'}"


def test_resolve_weights_false_skips_only_weights(empty_weights_dir):
    check(loss({'type': 'MILOLoss'}), resolve_weights=False)
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        check(loss({'type': 'MILOLoss', 'bogus': 1}), resolve_weights=False)


def test_each_weights_file_resolved_once(monkeypatch):
    from iqa_plugin import scoring
    calls = []
    monkeypatch.setattr(scoring, 'resolve_weights', lambda name, allow_download=True, **o: calls.append((name, o)))
    opt = iqa(train={'iqa_opt': {'a': {'type': 'RelationalLoss'}}},
              val={'metrics': {'b': {'type': 'relational'}, 'c': {'type': 'calculate_relational'},
                               'd': {'type': 'nr-lite'}}})
    check(opt)
    assert sorted(n for n, _ in calls) == ['nr-lite', 'relational']


# ------------------------------------------------------------------------------------------ 2. models
@pytest.mark.parametrize('model, use', [('SRModel', 'IQASRModel'), ('SRGANModel', 'IQASRGANModel'),
                                        ('ESRGANModel', 'IQAESRGANModel'),
                                        ('RealESRGANModel', 'IQARealESRGANModel')])
def test_iqa_opt_rejected_under_other_models(model, use):
    from basicsr.utils.registry import MODEL_REGISTRY
    if use not in MODEL_REGISTRY:
        pytest.skip(f'{use} is not registered yet')
    assert error_of(loss({'type': 'L1Loss'}, model=model)) == (
        f"train.iqa_opt is read only by the plugin's IQA models; use model_type: {use} ({model} ignores it)")
    check(loss({'type': 'L1Loss'}, model=use))
    check({'model_type': model, 'train': {'iqa_opt': None}})  # an empty block is harmless


def test_table_name_validator_rejected_under_other_models():
    msg = error_of(metric({'type': 'nr-lite'}, model='SRModel'))
    assert msg.startswith("val.metrics.m: type 'nr-lite' (a scoring-table metric) is read only by the plugin's "
                          "IQA models; write {type: calculate_iqa, metric: nr-lite} or use model_type: IQASRModel")
    check(metric({'type': 'calculate_iqa', 'metric': 'nr-lite'}, model='SRModel'))  # the uint8 validator works
    check(metric({'type': 'nr-lite'}))


def test_select_by_rejected_under_other_models():
    opt = metric({'type': 'calculate_psnr'}, model='SRModel', select_by='m')
    assert error_of(opt) == ("val.select_by is read only by the plugin's IQA models; use model_type: IQASRModel "
                             "(SRModel ignores it)")
    opt['model_type'] = 'IQASRModel'
    check(opt)
    check(opt, is_train=False)


def test_model_support_attribute():
    from basicsr.models.sr_model import SRModel

    from iqa_plugin.basicsr_glue.options_check import supports_iqa_options
    assert not supports_iqa_options(SRModel)
    assert supports_iqa_options(type('IQAThing', (SRModel,), {}))  # until the mixin's attribute is everywhere
    assert not supports_iqa_options(type('IQAThing', (SRModel,), {'iqa_options': False}))
    assert supports_iqa_options(type('Other', (SRModel,), {'iqa_options': True}))


# ------------------------------------------------------------------------------------------ 3. messages
def test_unknown_loss_names_the_closest_without_basicsr_print(capsys):
    msg = error_of(loss({'type': 'MILOLos'}))
    assert msg.startswith("unknown loss type 'MILOLos' in train.iqa_opt.l; did you mean MILOLoss? known: ")
    out, err = capsys.readouterr()
    assert 'is not found, use name' not in out + err


def test_basicsr_suffix_names_resolve_silently(capsys):
    check({'model_type': 'RealESRGANModel'})  # registered as RealESRGANModel_basicsr
    out, err = capsys.readouterr()
    assert 'is not found' not in out + err
    msg = error_of({'model_type': 'IQASRModl'})
    assert "did you mean IQASRModel" in msg and 'RealESRGANModel,' in msg and '_basicsr' not in msg


def test_unknown_validator_lists_table_metrics():
    msg = error_of(metric({'type': 'nr-lit'}))
    assert msg.startswith("unknown metric type 'nr-lit' in val.metrics.m; did you mean nr-lite? ")
    for name in ('calculate_iqa', 'calculate_psnr', 'calculate_milo', 'nr-lite', 'milo', 'musiq'):
        assert f' {name},' in msg or f' {name};' in msg or msg.endswith(f' {name}'), name
    assert '(type: NAME or {type: calculate_iqa, metric: NAME})' in msg
    # under a model that cannot read table names, they are offered through calculate_iqa only
    msg = error_of(metric({'type': 'nr-lit'}, model='SRModel'))
    assert 'did you mean' not in msg and '({type: calculate_iqa, metric: NAME}): ' in msg


@pytest.mark.parametrize('block, type_name', [
    ({'type': 'calculate_iqa', 'metric': 'nr-lite', 'bogus': 1}, 'calculate_iqa'),
    ({'type': 'nr-lite', 'bogus': 1}, 'nr-lite'),
    ({'type': 'calculate_milo', 'weights': 'milo-pseudomos', 'bogus': 1}, 'calculate_milo'),
    ({'type': 'calculate_relational', 'bogus': 1}, 'calculate_relational'),
    ({'type': 'calculate_afine', 'bogus': 1}, 'calculate_afine'),
    ({'type': 'calculate_nriqa', 'metric': 'nr-lite', 'bogus': 1}, 'calculate_nriqa'),
])
def test_unknown_keys_in_table_validators(block, type_name):
    msg = error_of(metric(block), resolve_weights=False)
    assert msg.startswith(f"unknown key 'bogus' in val.metrics.m ({type_name}); allowed: ")
    for key in ('crop_border', 'better', 'device', 'weights_path'):
        assert key in msg


@pytest.mark.parametrize('block', [
    {'type': 'calculate_iqa', 'metric': 'nr-lite', 'crop_border': 4, 'device': 'cpu', 'output': 'score',
     'input_order': 'HWC', 'weights_path': None},
    {'type': 'milo-pseudomos', 'crop_border': 4, 'better': 'lower'},
    {'type': 'calculate_milo', 'weights': 'milo-pseudomos', 'output': 'raw_error'},
    {'type': 'calculate_afine', 'ref_cache_mib': 64, 'size_mode': 'reflect', 'model_type': 'afine_fr'},
    {'type': 'calculate_nriqa', 'metric': 'musiq', 'pretrained': False},
])
def test_known_keys_in_table_validators_pass(block):
    check(metric(block), resolve_weights=False)


def test_table_validator_errors_name_the_block():
    assert error_of(metric({'type': 'calculate_iqa'})).startswith('val.metrics.m (calculate_iqa): calculate_iqa needs '
                                                                  'metric: NAME')
    msg = error_of(metric({'type': 'calculate_iqa', 'metric': 'nrlite'}))
    assert msg.startswith("val.metrics.m (calculate_iqa): unknown metric 'nrlite'; known: ") and 'nr-lite' in msg
    msg = error_of(metric({'type': 'calculate_nriqa', 'metric': 'milo'}))
    assert msg.startswith('val.metrics.m (calculate_nriqa): ') and 'full-reference' in msg
    msg = error_of(loss({'type': 'NRIQALoss', 'metric': 'niqe'}))
    assert msg.startswith("train.iqa_opt.l (NRIQALoss): metric 'niqe' cannot be a loss")


# ------------------------------------------------------------------------------------------ 4. better
@pytest.mark.parametrize('block, direction', [
    ({'type': 'milo', 'better': 'higher'}, 'lower'),
    ({'type': 'calculate_milo', 'weights': 'milo-pseudomos', 'better': 'higher'}, 'lower'),
    ({'type': 'calculate_iqa', 'metric': 'nr-lite', 'better': 'lower'}, 'higher'),
    ({'type': 'relational', 'better': 'lower'}, 'higher'),
    ({'type': 'calculate_afine', 'better': 'higher'}, 'lower'),
])
def test_better_contradicting_the_table_is_rejected(block, direction):
    msg = error_of(metric(block), resolve_weights=False)
    assert 'contradicts metric' in msg and f'which is {direction}-is-better' in msg
    assert msg.startswith(f"val.metrics.m ({block['type']}): better: ")


def test_better_may_be_omitted_or_agree():
    check(metric({'type': 'milo-pseudomos'}))
    check(metric({'type': 'milo-pseudomos', 'better': 'lower'}))
    check(metric({'type': 'nr-lite', 'better': 'higher'}))


def test_better_must_be_higher_or_lower():
    assert "better must be 'higher' or 'lower', got 'lowr'" in error_of(metric({'type': 'nr-lite', 'better': 'lowr'}))
    assert "better must be 'higher' or 'lower'" in error_of(metric({'type': 'calculate_psnr', 'better': 'up'}))


def test_basicsr_validator_directions():
    msg = error_of(metric({'type': 'calculate_psnr', 'better': 'lower'}))
    assert 'contradicts calculate_psnr, which is higher-is-better' in msg
    msg = error_of(metric({'type': 'calculate_niqe'}, select_by='m'))
    assert msg.startswith('val.select_by: m (calculate_niqe) is lower-is-better; add better: lower')
    check(metric({'type': 'calculate_niqe', 'better': 'lower'}, select_by='m'))
    check(metric({'type': 'milo-pseudomos'}, select_by='m'))  # defaults from the table in the IQA models


def test_select_by_names_a_metric_and_strategy():
    msg = error_of(metric({'type': 'calculate_psnr'}, select_by='psnr'))
    assert msg == "val.select_by: 'psnr' is not one of val.metrics: m"
    check(metric({'type': 'relational'}, select_by={'metric': 'm', 'strategy': 'relational'}))
    msg = error_of(metric({'type': 'relational'}, select_by={'metric': 'm', 'strategy': 'best'}))
    assert msg.startswith("val.select_by: unknown strategy 'best'; known: ")
    assert "unknown key 'how'" in error_of(metric({'type': 'relational'}, select_by={'metric': 'm', 'how': 1}))


@pytest.mark.parametrize('train, match', [
    ({'optim_g': {'type': 'AdamW', 'lr': 1e-4}}, r"train.optim_g.type: IQASRModel .* supports only Adam; got 'AdamW'"),
    ({'optim_d': {'type': 'SGD', 'lr': 1e-4}}, r"train.optim_d.type: .* got 'SGD'"),
    ({'scheduler': {'type': 'StepLR'}}, r"train.scheduler.type: IQASRModel supports MultiStepLR, .*got 'StepLR'"),
])
def test_optimizer_and_scheduler_types_basicsr_cannot_build(train, match):
    # BasicSR 1.4.2's BaseModel builds only Adam and three schedulers; it would fail at model construction
    assert re.search(match, error_of(iqa(train=train), resolve_weights=False))


def test_optimizer_types_of_models_that_build_any_torch_optimizer():
    # the plugin's metric trainings build any torch.optim class (MetricTrainModel.get_optimizer)
    opt = {'model_type': 'NRLiteModel', 'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3},
                                                 'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10]}}}
    check(opt, resolve_weights=False)
    check(iqa(train={'optim_g': {'type': 'Adam', 'lr': 1e-4}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [5]}}),
          resolve_weights=False)
