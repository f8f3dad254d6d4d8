"""The scoring table is the one place metric facts live: keyword rows, and every other list derived from it."""
import ast
import inspect

import pytest
import torch

from iqa_plugin import scoring


def test_rows_are_written_with_keywords_only():
    """Every ``MetricSpec(...)`` and row helper call in scoring/table.py names its arguments (the pyiqa helper takes the
    row's name, its metric_name, first)."""
    tree = ast.parse(inspect.getsource(scoring.table))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in ('MetricSpec', '_pyiqa_row')]
    assert len(calls) > 20
    for call in calls:
        allowed = 1 if call.func.id == '_pyiqa_row' else 0
        assert len(call.args) <= allowed, f'scoring/table.py:{call.lineno}: {call.func.id} with positional arguments'


def test_other_lists_are_derived_from_the_table():
    from iqa_plugin.apps import evaluate
    from iqa_plugin.labels import pseudomos_ensemble
    from iqa_plugin.scoring.pyiqa_adapter import NR_METRICS, metric_info

    assert set(NR_METRICS) == {n for n, s in scoring.METRICS.items() if s.pyiqa and s.kind == 'nr'}
    for name, info in NR_METRICS.items():
        assert info.min_size == scoring.METRICS[name].min_size
        assert info.loss_refusal == scoring.METRICS[name].loss
    assert evaluate.PYIQA_FR == ('lpips', 'dists')
    for name, member in pseudomos_ensemble.MEMBERS.items():
        spec = scoring.get_spec(name)
        assert spec.kind == 'fr'
        assert (member.lower_better, member.min_size) == (spec.lower_better, spec.min_size), name
    for name in ('lpips', 'dists'):
        spec = scoring.get_spec(name)
        assert (spec.kind, spec.lower_better) == ('fr', True)
        assert [wf.subdir for wf in metric_info(name).files()] == ['pyiqa', 'checkpoints']


def test_one_range_normalisation_for_losses_and_scorers():
    s = torch.tensor([0.0, 25.0, 100.0])
    torch.testing.assert_close(scoring.normalise_score(s, (0.0, 100.0), False), torch.tensor([0.0, 0.25, 1.0]))
    torch.testing.assert_close(scoring.normalise_score(s, (0.0, 100.0), True), torch.tensor([1.0, 0.75, 0.0]))
    torch.testing.assert_close(scoring.normalise_score(s, (0.0, 100.0), False, as_loss=True),
                               torch.tensor([1.0, 0.75, 0.0]))
    torch.testing.assert_close(scoring.normalise_score(s, (0.0, 100.0), True, as_loss=True),
                               torch.tensor([0.0, 0.25, 1.0]))


@pytest.mark.parametrize('name', ['lpips', 'dists'])
def test_lpips_and_dists_need_their_files_and_name_them(name):
    """Offline without the files: not available, and the reason names the file and where it is looked for."""
    ok, why = scoring.available_offline(name)
    assert not ok
    from iqa_plugin.scoring.pyiqa_adapter import locate_files
    found, missing = locate_files(name)
    wf, searched = missing[0]  # the first file that is not here (LPIPS: its AlexNet; the lpips package ships the rest)
    assert wf.filename in why and str(searched[-1]) in why
    if name == 'lpips':
        assert [p.name for p in found] == ['alex.pth'] and wf.subdir == 'checkpoints'


@pytest.mark.parametrize('name', ['nr-lite', 'niqe-fitted', 'relational', 'milo-pseudomos', 'nlpd', 'paq2piq'])
def test_built_scorers_carry_the_rows_facts(name):
    """A scorer built by a row's factory reports the row's kind and direction, and (where it has them) its
    minimum side and score range: the factories take them from the table, not from a second copy."""
    scorer = scoring.create_metric(name, pretrained=False) if name in ('nr-lite', 'paq2piq') else \
        scoring.create_metric(name)
    spec = scoring.get_spec(name)
    assert (scorer.kind, scorer.lower_better) == (spec.kind, spec.lower_better)
    if hasattr(scorer, 'score_range'):
        assert (scorer.min_size, scorer.score_range, scorer.loss_capable) == \
            (spec.min_size, spec.score_range, spec.loss_capable)


def test_network_minimum_sides_equal_the_rows():
    import importlib

    for name, module in [('nr-lite', 'nr_lite_arch'), ('niqe-fitted', 'niqe_fitted_arch'),
                         ('relational', 'relational_arch'), ('lgdm', 'lgdm_arch')]:
        assert importlib.import_module(f'iqa_plugin.archs.{module}').MIN_SIZE == scoring.get_spec(name).min_size
