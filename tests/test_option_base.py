"""``base:`` inheritance of option files (iqa_plugin/basicsr_glue/option_base.py) in the pre-flight and in training."""
import pytest
import yaml

import iqa_plugin  # noqa: F401
from iqa_plugin.basicsr_glue.option_base import OptionBaseError, deep_merge, load_with_bases, write_resolved


def _write(path, data):
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return path


def test_merge_order_and_null_switches_off(tmp_path):
    _write(tmp_path / 'a.yml', {'name': 'a', 'train': {'pixel_opt': {'type': 'L1Loss'}, 'perceptual_opt': {'type': 'X'},
                                                      'milestones': [1, 2]}})
    _write(tmp_path / 'b.yml', {'base': 'a.yml', 'train': {'milestones': [3]}})
    _write(tmp_path / 'c.yml', 'base: [b.yml]\nname: c\ntrain:\n  perceptual_opt: ~\n  pixel_opt: {loss_weight: 2}\n')
    opt = load_with_bases(tmp_path / 'c.yml')
    assert opt == {'name': 'c', 'train': {'pixel_opt': {'type': 'L1Loss', 'loss_weight': 2}, 'perceptual_opt': None,
                                          'milestones': [3]}}
    assert 'base' not in opt
    (tmp_path / 'out').mkdir()
    resolved = yaml.safe_load(write_resolved(tmp_path / 'c.yml', tmp_path / 'out').read_text())
    assert resolved == opt
    assert deep_merge({'a': {'b': 1}}, {'a': 2}) == {'a': 2}


def test_cycles_and_missing_bases_are_one_line_errors(tmp_path):
    _write(tmp_path / 'x.yml', {'base': 'y.yml'})
    _write(tmp_path / 'y.yml', {'base': 'x.yml'})
    with pytest.raises(OptionBaseError, match='cycle'):
        load_with_bases(tmp_path / 'x.yml')
    _write(tmp_path / 'z.yml', {'base': 'nope.yml'})
    with pytest.raises(OptionBaseError, match='nope.yml'):
        load_with_bases(tmp_path / 'z.yml')
    from iqa_plugin.basicsr_glue.options_check import OptionError, load_yaml
    with pytest.raises(OptionError, match='nope.yml'):
        load_yaml(tmp_path / 'z.yml')
