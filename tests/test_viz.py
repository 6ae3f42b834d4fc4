"""Grids, PNGs and GIFs from NHWC images in [-1, 1]."""

import numpy as np
import pytest
from PIL import Image, ImageSequence

from jaxdiff import viz


def constant_images(values, h=3, w=4, c=1):
    return np.stack([np.full((h, w, c), v, np.float32) for v in values])


def test_to_uint8_maps_range_and_clips():
    x = np.array([-1.0, 0.0, 1.0, -3.0, 2.0, np.nan, 0.5])
    np.testing.assert_array_equal(viz.to_uint8(x), [0, 128, 255, 0, 255, 0, 191])


def test_grid_shape_padding_and_pixels():
    values = [-1.0, 1.0, 0.0, 5.0, 0.5]
    grid = viz.image_grid(constant_images(values), ncol=2, padding=2)
    # 3 rows x 2 cols of 3x4 images, 2 px around and between.
    assert grid.shape == (3 * (3 + 2) + 2, 2 * (4 + 2) + 2, 1) and grid.dtype == np.uint8
    expected = [0, 255, 128, 255, 191]
    for k, value in enumerate(expected):
        top, left = 2 + (k // 2) * 5, 2 + (k % 2) * 6
        np.testing.assert_array_equal(grid[top : top + 3, left : left + 4], value)
    # Padding and the empty last cell are black; that is everything outside the images.
    mask = np.zeros(grid.shape[:2], bool)
    for k in range(len(values)):
        top, left = 2 + (k // 2) * 5, 2 + (k % 2) * 6
        mask[top : top + 3, left : left + 4] = True
    assert (grid[~mask] == 0).all()


def test_grid_default_ncol_and_no_padding():
    grid = viz.image_grid(constant_images([0.0] * 5, c=3), padding=0)
    assert grid.shape == (2 * 3, 3 * 4, 3)  # ncol = ceil(sqrt(5)) = 3
    assert (grid[:3] == 128).all() and (grid[3:, :8] == 128).all() and (grid[3:, 8:] == 0).all()


def test_grid_rejects_wrong_rank():
    with pytest.raises(ValueError, match="NHWC"):
        viz.image_grid(np.zeros((4, 8, 8)))


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_save_grid_round_trips(tmp_path, channels, mode):
    images = np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, channels))
    path = viz.save_grid(tmp_path / "sub" / "grid.png", images, ncol=3)
    with Image.open(path) as image:
        assert image.mode == mode
        read = np.asarray(image).reshape(image.size[1], image.size[0], channels)
    np.testing.assert_array_equal(read, viz.image_grid(images, ncol=3))


def test_gif_has_one_frame_per_step(tmp_path):
    # Five distinct frames (Pillow merges identical neighbours, so keep them different).
    trajectory = np.stack([constant_images([v, -v, v / 2]) for v in np.linspace(-1, 1, 5)])
    path = viz.save_gif(tmp_path / "run.gif", trajectory, ncol=3, fps=10)
    with Image.open(path) as gif:
        frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(gif)]
        assert gif.info["duration"] == 100
    assert len(frames) == 5
    expected = viz.image_grid(trajectory[1], ncol=3)[..., 0]
    assert frames[1].shape == expected.shape
    np.testing.assert_allclose(frames[1], expected, atol=2)  # GIF palette quantisation


def test_side_by_side(tmp_path):
    right = constant_images([1.0] * 4)
    wrong = constant_images([-0.5] * 4)
    path = viz.save_side_by_side(tmp_path / "cmp.png", {"ddpm": right, "ddpm_no_noise": wrong})
    with Image.open(path) as image:
        pixels = np.asarray(image)
    grid_w = viz.image_grid(right).shape[1]
    assert pixels.shape[1] > 2 * grid_w
    assert (pixels == 255).sum() >= 4 * 12  # the "ddpm" images (plus label text)
    assert (pixels == viz.to_uint8(-0.5)).sum() == 4 * 12


def test_grid_scale_repeats_pixels():
    images = np.array([[[[-1.0], [1.0]], [[1.0], [-1.0]]]])  # one 2x2 checkerboard
    grid = viz.image_grid(images, padding=0, scale=3)
    assert grid.shape == (6, 6, 1)
    np.testing.assert_array_equal(grid[:3, :3, 0], 0)
    np.testing.assert_array_equal(grid[:3, 3:, 0], 255)
    np.testing.assert_array_equal(grid[3:, :3, 0], 255)
    assert viz.display_scale(16) == 3 and viz.display_scale(64) == 1
    with pytest.raises(ValueError, match="scale"):
        viz.image_grid(images, scale=0)
