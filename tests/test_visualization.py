"""plot_sampling_points draws the model's real sampling positions, in input pixels."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch

from dat_lightning.visualization import plot_sampling_points

pytestmark = pytest.mark.usefixtures("one_thread")


def plotted(fig, gid: str) -> list[np.ndarray]:
    """Offsets (x, y) of the scatter with ``gid`` on each axis that has one."""
    return [c.get_offsets() for ax in fig.axes for c in ax.collections if c.get_gid() == gid]


def expected_pixels(pos: torch.Tensor, fmap: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """align_corners=True: -1 / +1 = centres of feature cells 0 / n-1; a cell is size/fmap pixels."""
    out = torch.empty_like(pos)
    for axis in (0, 1):
        cell_index = (pos[..., axis] + 1) / 2 * (fmap[axis] - 1)
        out[..., axis] = (cell_index + 0.5) * size[axis] / fmap[axis] - 0.5
    return out


@pytest.mark.parametrize(("generation", "stage"), [("v1", 1), ("pp", 0)])
def test_png_shows_the_sampling_points_of_the_model(tmp_path, tiny_dat, generation, stage):
    torch.manual_seed(0)
    model = tiny_dat(generation).eval()
    images = torch.randn(2, 3, 32, 32)
    fig = plot_sampling_points(model, images, stage=stage, num_queries=2, top_k=3)
    path = tmp_path / "points.png"
    fig.savefig(path, dpi=60)

    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.std() > 0.1  # not blank
    block = dict(model.deformable_blocks())[f"stages.{stage}.attns.1"]
    record = block.last_record
    assert not block.record_offsets and not block.record_attention  # flags restored
    points = plotted(fig, "sampling_points")
    assert len(points) == 2  # one per image
    for i, xy in enumerate(points):
        yx = expected_pixels(record.pos[i], record.fmap_size, (32, 32)).reshape(-1, 2)
        np.testing.assert_allclose(xy, yx.flip(-1).numpy(), rtol=1e-5, atol=1e-4)
    # The offsets really move the points away from the reference grid.
    refs = plotted(fig, "reference_points")
    assert np.abs(points[0] - refs[0]).max() > 1.0
    assert [len(q) for q in plotted(fig, "queries")] == [2, 2]


def test_uint8_image_is_normalised_like_the_tensor_input(tiny_dat):
    torch.manual_seed(0)
    model = tiny_dat("v1").eval()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    from_numpy = plotted(plot_sampling_points(model, image, block="stages.2.attns.1", mean=mean, std=std),
                         "sampling_points")
    tensor = (torch.from_numpy(image).float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    from_tensor = plotted(plot_sampling_points(model, tensor.permute(2, 0, 1), block="stages.2.attns.1",
                                               mean=mean, std=std), "sampling_points")
    np.testing.assert_allclose(from_numpy[0], from_tensor[0], atol=1e-4)


def test_unknown_block_lists_the_available_ones(tiny_dat):
    with pytest.raises(ValueError, match=r"stages\.1\.attns\.1"):
        plot_sampling_points(tiny_dat("v1"), torch.randn(3, 32, 32), block="stages.0.attns.0")


def test_figure_explains_itself(tiny_dat):
    torch.manual_seed(0)
    fig = plot_sampling_points(tiny_dat("v1").eval(), torch.randn(1, 3, 32, 32), stage=2, num_queries=2)
    points, queries, histogram = fig.axes[:3]
    assert fig.get_suptitle() == "stage2: block stages.2.attns.1"
    labels = [t.get_text() for t in points.get_legend().get_texts()]
    assert labels == ["reference point", "sampling point, group 0", "sampling point, group 1"]
    labels = [t.get_text() for t in queries.get_legend().get_texts()]
    assert len(labels) == 3 and labels[-1] == "its keys (area: attention)"
    for ax in (points, queries):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (input pixels)", "y (input pixels)")
    assert histogram.get_ylabel() == "sampling points" and histogram.get_xlabel() == "offset (key-grid cells)"
    fig.canvas.draw()
    ticks = histogram.get_yticks()
    assert np.allclose(ticks, np.round(ticks))
    (stars,) = [c for c in queries.collections if c.get_gid() == "queries"]
    colours = stars.get_facecolors()[:, :3]
    gaps = [np.abs(a - b).sum() for i, a in enumerate(colours) for b in colours[i + 1:]]
    assert min(gaps) > 0.5  # clearly different colours


def test_block_on_a_one_cell_map_is_flagged_inactive(tiny_dat):
    fig = plot_sampling_points(tiny_dat("v1").eval(), torch.randn(1, 3, 32, 32), stage=3)
    assert "inactive: 1x1 feature map" in fig.get_suptitle()
