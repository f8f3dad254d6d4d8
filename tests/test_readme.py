"""The README's option snippet is what a new user copies first: it must pass the pre-flight check offline
(with only the weights that ship in the package) and train in an IQA model."""
import re
from pathlib import Path

import pytest
import yaml

import iqa_plugin  # noqa: F401

README = Path(__file__).resolve().parents[1] / 'README.md'


def readme_snippet():
    text = README.read_text(encoding='utf-8')
    block = re.search(r'```yaml\n(model_type: IQASRModel.*?)```', text, re.S)
    assert block, 'README has no option snippet starting with model_type: IQASRModel'
    return yaml.safe_load(block.group(1))


def test_readme_snippet_passes_preflight_offline(monkeypatch, tmp_path):
    from conftest import make_sr_folder
    from iqa_plugin.basicsr_glue.options_check import check_options

    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(tmp_path / 'empty'))
    data = make_sr_folder(tmp_path / 'data', n=2, size=32)
    opt = readme_snippet()
    opt['datasets'] = {'val': {'name': 'v', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'HR'),
                               'dataroot_lq': str(data / 'LRx4'), 'io_backend': {'type': 'disk'}}}
    check_options(opt)  # resolves every weights file it names: all ship with the package
    # the same snippet with the official MILO weights, missing offline, fails before anything is written
    opt['val']['metrics']['milo'] = {'type': 'calculate_milo', 'better': 'lower'}
    with pytest.raises(Exception, match='MILO.pth'):
        check_options(opt)
