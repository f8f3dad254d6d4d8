"""``iqa-plugin bench lora``: the --quick run goes through the CLI and its JSON has every figure; the
high-frequency measure separates low- from high-frequency changes; bad options fail in one line."""
import json
import math

import pytest
import torch

from iqa_plugin.apps.bench import BENCHES
from iqa_plugin.apps.bench import lora_bench

FIGURES = ('trainable', 'step_s', 'mem_bytes', 'nr_lite_gain', 'niqe_gain', 'milo_gain', 'psnr_change', 'hf_rel',
           'hf_share')


def test_quick_bench_through_cli(tmp_path, capsys):
    from iqa_plugin.cli import dispatch
    from iqa_plugin.models import lora

    assert BENCHES['lora'] == 'iqa_plugin.apps.bench.lora_bench:main'
    assert dispatch(['bench', 'lora', '--quick', '--device', 'cpu', '--work', str(tmp_path / 'work'),
                     '--figures', str(tmp_path / 'fig')]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result['bench'] == 'lora' and result['lambdas'] == [1.0]
    for mode in ('full', 'lora'):
        for key in FIGURES:
            value = result['per_lambda']['1'][mode][key]
            assert isinstance(value, (int, float)) and math.isfinite(value), (mode, key, value)
    full, ada = result['full'], result['lora']
    assert result['ratio'] == pytest.approx(ada['hf_rel'] / full['hf_rel'])
    # trainable parameters: every weight for full FT; for LoRA rank*(in*k*k) + out*rank per adapted conv
    args = lora_bench.parse(['--quick'])
    net = lora.build_network_cpu(lora_bench.network_opt(args))
    assert full['trainable'] == sum(p.numel() for p in net.parameters())
    modules = dict(lora.adaptable_modules(net))
    expected = sum(args.rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
                   for m in (modules[n] for n in lora.resolve_targets(net, preset='rrdb')))
    assert ada['trainable'] == expected
    # CPU memory is counted: LoRA keeps grads and Adam state for far fewer parameters
    assert 0 < ada['mem_bytes'] < full['mem_bytes']
    assert full['hf_rel'] > 0 and 0 <= full['hf_share'] <= 1
    assert (tmp_path / 'fig' / 'lora_tradeoff.png').is_file() and (tmp_path / 'fig' / 'lora_crops.png').is_file()
    assert len(list((tmp_path / 'work').glob('pretrained_*.pth'))) == 1  # cached for a repeat


def test_high_frequency_measure_separates_bands():
    h = w = 64
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing='ij')
    ref = (0.5 + 0.2 * torch.sin(2 * math.pi * x / 32)).expand(1, 3, h, w)
    low = 0.05 * torch.sin(2 * math.pi * y / 32).expand(1, 3, h, w)        # 1/32 cycles/px: below 1/8
    high = 0.05 * torch.cos(math.pi * (x + y)).expand(1, 3, h, w)         # checkerboard: at Nyquist
    rel_low, share_low = lora_bench.high_frequency(low, ref + torch.rand(1, 3, h, w) * 0.1, 0.25)
    rel_high, share_high = lora_bench.high_frequency(high, ref + torch.rand(1, 3, h, w) * 0.1, 0.25)
    assert share_low < 0.01 and share_high > 0.99
    assert rel_high > 100 * rel_low


@pytest.mark.parametrize('argv, message', [(['--lambdas', '0.1,1', '--lambda', '0.5'], 'is not one of --lambdas'),
                                           (['--lambdas', 'a,b'], 'comma-separated numbers'),
                                           (['--patch', '30'], 'multiples of --scale')])
def test_bad_options_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        lora_bench.parse(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
