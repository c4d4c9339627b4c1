import math
import random

import numpy as np
import pytest
import torch

from explora_geo.ssl.masking import BlockMasking


def reference_block(mask: np.ndarray, max_patches: float, rng: random.Random) -> int:
    """One rectangle of DinoV2's MaskingGenerator (min 4 patches, aspect 0.3 - 1/0.3)."""
    height, width = mask.shape
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    delta = 0
    for _ in range(10):
        area = rng.uniform(4, max_patches)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = round(math.sqrt(area * aspect))
        w = round(math.sqrt(area / aspect))
        if w < width and h < height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            already = mask[top : top + h, left : left + w].sum()
            if 0 < h * w - already <= max_patches:
                for i in range(top, top + h):
                    for j in range(left, left + w):
                        if mask[i, j] == 0:
                            mask[i, j] = 1
                            delta += 1
            if delta > 0:
                break
    return delta


def reference_masks(
    batch: int, grid: tuple[int, int], rng: random.Random
) -> np.ndarray:
    """DinoV2's collate: half the images, ratios spread over [0.1, 0.5], shuffled."""
    height, width = grid
    n = height * width
    cap = 0.5 * n
    masked = int(batch * 0.5)
    probs = torch.linspace(0.1, 0.5, masked + 1)
    out = []
    for i in range(masked):
        target = int(n * rng.uniform(float(probs[i]), float(probs[i + 1])))
        mask = np.zeros(grid, dtype=bool)
        count = 0
        while count < target:
            delta = reference_block(mask, min(target - count, cap), rng)
            if delta == 0:
                break
            count += delta
        out.append(mask)
    out += [np.zeros(grid, dtype=bool) for _ in range(masked, batch)]
    rng.shuffle(out)
    return np.stack(out).reshape(batch, -1)


@pytest.mark.parametrize(('batch', 'grid'), [(8, (16, 16)), (6, (7, 7)), (5, (8, 6))])
def test_matches_dinov2_reference(batch: int, grid: tuple[int, int]) -> None:
    random.seed(0)
    got = BlockMasking()(batch, grid)
    expected = reference_masks(batch, grid, random.Random(0))
    assert got.dtype == torch.bool
    assert got.shape == (batch, grid[0] * grid[1])
    np.testing.assert_array_equal(got.numpy(), expected)


def test_fraction_of_images_and_ratios() -> None:
    random.seed(1)
    batch, grid = 64, (16, 16)
    masks = BlockMasking()(batch, grid)
    counts = masks.sum(1)
    # Exactly half of the images are masked ...
    assert int((counts > 0).sum()) == 32
    # ... each with at most the upper ratio and, here, at least the lower one.
    ratios = counts[counts > 0].float() / 256
    assert float(ratios.max()) <= 0.5
    assert float(ratios.min()) >= 0.09
    # The targets are spread over the range: both ends are represented.
    assert float(ratios.min()) < 0.2 and float(ratios.max()) > 0.4


def mean_masked_neighbours(masks: torch.Tensor) -> float:
    """Mean number of masked 4-neighbours of the masked patches of (B, H, W) masks."""
    padded = torch.nn.functional.pad(masks.float(), (1, 1, 1, 1))
    neighbours = (
        padded[:, :-2, 1:-1]
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
    )
    return float(neighbours[masks].mean())


def test_masks_are_blocks() -> None:
    # Rectangles: a masked patch has on average more than 2 masked 4-neighbours,
    # independent masking at the same ratio about 4 x ratio (< 1.5 here).
    random.seed(2)
    masks = BlockMasking(mask_probability=1.0)(16, (12, 12)).view(16, 12, 12)
    assert mean_masked_neighbours(masks) > 2.0
    torch.manual_seed(0)
    independent = torch.rand(16, 12, 12) < masks.float().mean()
    assert mean_masked_neighbours(independent) < 1.5


def test_options() -> None:
    random.seed(3)
    masks = BlockMasking(mask_probability=0.25, mask_ratio=(0.2, 0.3))(8, (10, 10))
    counts = masks.sum(1)
    assert int((counts > 0).sum()) == 2
    assert int(counts.max()) <= 30
    assert not BlockMasking(mask_probability=0.0)(4, (8, 8)).any()


def test_errors() -> None:
    with pytest.raises(
        ValueError, match='patch grid 2x2 is too small for block masking'
    ):
        BlockMasking()(4, (2, 2))
    with pytest.raises(ValueError, match=r'mask_ratio must be \(low, high\)'):
        BlockMasking(mask_ratio=(0.5, 0.1))
    with pytest.raises(ValueError, match='mask_probability must be in'):
        BlockMasking(mask_probability=1.5)
    with pytest.raises(ValueError, match='min_aspect must be in'):
        BlockMasking(min_aspect=0)
