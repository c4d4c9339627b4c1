"""The demo's data: the bundled Sentinel-2 scene, its labels and chips, and the RGB photographs.

.. versionadded:: 0.1
"""

from importlib.resources import files
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ..sensors import IMAGENET_RGB, SENTINEL2, Normalization
from .config import CLASSES

#: How the scene's digital numbers become model input: SatMAE's formula with
#: the fMoW-Sentinel statistics, all 13 bands (the model drops B1, B9, B10).
SCENE_NORMALIZATION: Normalization = SENTINEL2.normalization('satmae')

#: Bands shown as red, green, blue in false-colour pictures (near infrared, red, green).
FALSE_COLOUR = ('B8', 'B4', 'B3')


def scene_path() -> Path:
    """The bundled 13-band Sentinel-2 L1C scene."""
    return Path(str(files('explora_geo') / 'assets' / 's2_virginia_13band.tif'))


def read_scene(path: Path) -> np.ndarray:
    """Read a scene as ``(13, H, W)`` float32 digital numbers, checking its bands.

    Args:
        path: A 13-band GeoTIFF in Sentinel-2 band order (B1 ... B12).

    Returns:
        The bands.

    Raises:
        ValueError: If the file does not hold the 13 Sentinel-2 bands in order.
    """
    with rasterio.open(path) as src:
        if src.count != len(SENTINEL2.bands):
            raise ValueError(
                f'{path}: expected the {len(SENTINEL2.bands)} Sentinel-2 bands '
                f'{SENTINEL2.bands}, found {src.count} bands'
            )
        names = tuple(src.descriptions)
        if any(names) and names != SENTINEL2.bands:
            raise ValueError(
                f'{path}: bands are {names}, expected {SENTINEL2.bands} in this order'
            )
        return src.read().astype(np.float32)


def land_cover_labels(scene: np.ndarray) -> np.ndarray:
    """Per-pixel land-cover class from two standard spectral indices.

    NDWI = (B3 - B8) / (B3 + B8) (McFeeters, 1996) and NDVI = (B8 - B4) / (B8 + B4)
    (Rouse et al., 1974) on top-of-atmosphere digital numbers: water where
    NDWI > 0.2; dense vegetation where NDVI > 0.45; marsh / sparse vegetation
    where 0.15 < NDVI <= 0.45; bare or built-up otherwise.

    Args:
        scene: ``(13, H, W)`` bands in Sentinel-2 order.

    Returns:
        ``(H, W)`` int64 class indices into :data:`~explora_geo.demo.config.CLASSES`.
    """
    b3, b4, b8 = scene[2], scene[3], scene[7]
    ndwi = (b3 - b8) / np.maximum(b3 + b8, 1e-6)
    ndvi = (b8 - b4) / np.maximum(b8 + b4, 1e-6)
    labels = np.full(ndvi.shape, 3, dtype=np.int64)
    labels[ndvi > 0.15] = 2
    labels[ndvi > 0.45] = 1
    labels[ndwi > 0.2] = 0
    return labels


def majority_labels(pixel_labels: Tensor, size: int, stride: int) -> Tensor:
    """Majority class of every ``size x size`` window, windows *stride* apart.

    Ties go to the lower class index (as ``numpy.bincount(...).argmax()``).

    Args:
        pixel_labels: ``(H, W)`` class indices.
        size: Window size.
        stride: Distance between window starts.

    Returns:
        ``(rows, cols)`` class indices of the windows that fit in the image.
    """
    onehot = F.one_hot(pixel_labels, len(CLASSES)).permute(2, 0, 1).float()
    counts = F.avg_pool2d(onehot[None], size, stride)[0]
    return counts.argmax(0)


def stretch(image: Tensor, low: float = 2, high: float = 98) -> Tensor:
    """Per-band percentile stretch of ``(C, H, W)`` values to [0, 1]."""
    flat = image.flatten(1).double()
    lo = torch.quantile(flat, low / 100, dim=1)[:, None, None].float()
    hi = torch.quantile(flat, high / 100, dim=1)[:, None, None].float()
    return ((image - lo) / (hi - lo)).clamp(0, 1)


class ChipGrid:
    """Chips of the scene with a spatial train / held-out split.

    The scene is divided into blocks of ``block`` pixels; a diagonal pattern of
    a quarter of the blocks is held out, so that the held-out chips cover every
    kind of land cover while no pre-training or training chip overlaps them.
    Chips overlap by half; a chip is held out when it lies in held-out blocks,
    used for training when it avoids them, and dropped otherwise. A chip's
    label is the majority of its pixels' :func:`land_cover_labels`.

    Attributes:
        chip: Chip size.
        block: Size of the split's blocks.
        normalized: ``(13, H, W)`` model input (:data:`SCENE_NORMALIZATION`).
        rgb: ``(3, H, W)`` natural colour (B4, B3, B2) in [0, 1].
        pixel_labels: ``(H, W)`` land-cover class per pixel.
        test_mask: ``(H, W)`` True in the held-out blocks.
        cells: Top-left corners of the chips kept.
        labels: Their labels.
        is_test: Whether each chip is held out.
    """

    def __init__(self, scene: np.ndarray, chip: int, block: int = 128) -> None:
        """Cut the scene into chips.

        Args:
            scene: ``(13, H, W)`` digital numbers.
            chip: Chip size in pixels (divides *block*).
            block: Size of the split's blocks in pixels.
        """
        _, height, width = scene.shape
        self.chip, self.block = chip, block
        raw = torch.from_numpy(scene)
        self.normalized = SCENE_NORMALIZATION(raw)
        rgb = [SENTINEL2.bands.index(b) for b in SENTINEL2.rgb_bands]
        self.rgb = stretch(raw[rgb])
        self.pixel_labels = torch.from_numpy(land_cover_labels(scene))
        rows = torch.arange(height) // block
        cols = torch.arange(width) // block
        self.test_mask = (rows[:, None] + cols[None, :]) % 4 == 0
        stride = chip // 2
        held = self.test_mask
        self.cells = [
            (y, x)
            for y in range(0, height - chip + 1, stride)
            for x in range(0, width - chip + 1, stride)
            if held[y : y + chip, x : x + chip].all()
            or not held[y : y + chip, x : x + chip].any()
        ]
        windows = majority_labels(self.pixel_labels, chip, stride)
        self.labels = torch.stack(
            [windows[y // stride, x // stride] for y, x in self.cells]
        )
        self.is_test = torch.tensor([bool(held[y, x]) for y, x in self.cells])

    def held_out_blocks(self) -> list[tuple[int, int, int]]:
        """The held-out blocks as ``(row, col, size)`` in pixels."""
        height, width = self.test_mask.shape
        return [
            (y, x, self.block)
            for y in range(0, height, self.block)
            for x in range(0, width, self.block)
            if bool(self.test_mask[y, x])
        ]

    def select(self, split: str) -> Tensor:
        """Boolean mask of the chips of ``'train'`` or ``'test'``."""
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.is_test if split == 'test' else ~self.is_test

    def stack(self, image: Tensor, split: str) -> Tensor:
        """Chips of *image* (``(C, H, W)``) for ``'train'`` or ``'test'``."""
        c = self.chip
        keep = self.select(split).tolist()
        return torch.stack(
            [
                image[:, y : y + c, x : x + c]
                for (y, x), k in zip(self.cells, keep, strict=True)
                if k
            ]
        )

    def split_labels(self, split: str) -> Tensor:
        """Labels of the chips of *split*."""
        return self.labels[self.select(split)]

    def split_cells(self, split: str) -> list[tuple[int, int]]:
        """Top-left corners of the chips of *split*."""
        keep = self.select(split).tolist()
        return [cell for cell, k in zip(self.cells, keep, strict=True) if k]

    def train_positions(self) -> Tensor:
        """Top-left corners ``(N, 2)`` of every chip that avoids the held-out blocks."""
        held = F.pad(self.test_mask.float().cumsum(0).cumsum(1), (1, 0, 1, 0))
        c = self.chip
        inside = held[c:, c:] - held[:-c, c:] - held[c:, :-c] + held[:-c, :-c]
        return torch.nonzero(inside == 0)


class RandomChips(Dataset[dict[str, Tensor]]):
    """Random chips from the training blocks (unlabelled, for pre-training)."""

    def __init__(
        self, image: Tensor, chip: int, positions: Tensor, length: int, seed: int
    ) -> None:
        """Draw the chip positions.

        Args:
            image: ``(C, H, W)`` normalised scene.
            chip: Chip size.
            positions: Allowed top-left corners ``(N, 2)``.
            length: Chips per epoch.
            seed: Seed of the chip positions.
        """
        self.image, self.chip, self.length = image, chip, length
        generator = torch.Generator().manual_seed(seed)
        self.corners = positions[
            torch.randint(len(positions), (length,), generator=generator)
        ]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        y, x = (int(v) for v in self.corners[index])
        c = self.chip
        return {'image': self.image[:, y : y + c, x : x + c]}


class LabelledChips(TensorDataset):
    """Chips and labels as TorchGeo's ``{'image', 'label'}`` samples."""

    def __getitem__(self, index: int) -> dict[str, Tensor]:  # type: ignore[override]
        image, label = super().__getitem__(index)
        return {'image': image, 'label': label}


def rgb_source_images(size: int) -> list[Tensor]:
    """The bundled NEON RGB photographs, halved to 0.2 m, as ``(3, H, W)`` in [0, 1].

    Args:
        size: Smallest side kept.

    Returns:
        The photographs at least *size* pixels on each side.
    """
    folder = files('explora_geo') / 'assets' / 'neon_rgb'
    images = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith('.jpg'):
            continue
        with entry.open('rb') as handle:
            image = Image.open(handle).convert('RGB')
            image = image.resize(
                (image.width // 2, image.height // 2), Image.Resampling.BILINEAR
            )
            array = np.asarray(image, dtype=np.float32) / IMAGENET_RGB.scale
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        if min(tensor.shape[1:]) >= size:
            images.append(tensor)
    return images


#: ImageNet normalisation of RGB images in [0, 1] (the source MAE's input).
RGB_NORMALIZATION = Normalization(
    'standard',
    IMAGENET_RGB.bands,
    tuple(m / IMAGENET_RGB.scale for m in IMAGENET_RGB.mean),
    tuple(s / IMAGENET_RGB.scale for s in IMAGENET_RGB.std),
)
