"""The one copy of the small image helpers: image_paths, quantise8 and write_image (iqa_plugin.utils.image)."""
import numpy as np
import pytest
import torch

from iqa_plugin.utils.image import image_paths, quantise8, read_image, write_image


def test_quantise8_clips_and_rounds_like_an_8bit_file(tmp_path):
    x = np.array([[[-0.2, 0.5 / 255, 1.3]], [[0.1234, 0.5, 0.9999]]], dtype=np.float32)
    q = quantise8(x)
    assert q.dtype == np.float32
    assert q.min() >= 0 and q.max() <= 1  # clipped: an 8-bit file cannot hold -0.2 or 1.3
    np.testing.assert_array_equal(np.round(q * 255), q * 255)  # on the k / 255 grid
    write_image(tmp_path / 'q.png', x)
    stored = read_image(tmp_path / 'q.png')[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(stored, q)  # what the file holds


def test_write_image_uint8_and_float_rgb_order(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_image(tmp_path / 'sub' / 'a.png', rgb)  # creates the folder
    back = read_image(tmp_path / 'sub' / 'a.png')[0]
    assert torch.allclose(back[0], torch.full((4, 5), 200 / 255)) and back[1:].abs().max() == 0
    with pytest.raises(OSError, match='cannot write'):
        write_image(tmp_path / 'a.unknown_extension', rgb)


def test_image_paths_of_folders(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    write_image(tmp_path / 'a' / '2.png', np.zeros((2, 2, 3), np.uint8))
    write_image(tmp_path / 'b' / '1.png', np.zeros((2, 2, 3), np.uint8))
    (tmp_path / 'a' / 'notes.txt').write_text('x')
    assert [p.name for p in image_paths([tmp_path / 'a', tmp_path / 'b'])] == ['2.png', '1.png']
    with pytest.raises(FileNotFoundError, match='missing'):
        image_paths(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images'):
        image_paths(tmp_path / 'empty')
