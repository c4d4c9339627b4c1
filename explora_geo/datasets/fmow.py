"""fMoW-RGB and its temporal variant (for RGB and Sentinel-2 images)."""

import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Unpack

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torchgeo.datasets.utils import Path, Sample

from ..sensors import FMOW_RGB
from .fmow_base import FMoWBase, FMoWOptions, SplitIndex
from .fmow_metadata import (
    FMoWSampleError,
    class_index,
    csv_row,
    parse_timestamp,
    read_metadata_csv,
)
from .fmow_sentinel import FMoWSentinel


class FMoW(FMoWBase):
    """Functional Map of the World (fMoW-RGB) dataset.

    `fMoW <https://github.com/fMoW/dataset>`__ holds about 500,000 high-resolution
    satellite images (JPEG, sizes vary) of 62 kinds of facilities and land use, many
    locations seen several times. It is the main target domain of ExPLoRA.

    Two on-disk layouts are read:

    * ``layout='release'`` (the official fMoW-rgb release):
      ``<split>/<category>/<category>_<location>/<category>_<location>_<image>_rgb.jpg``
      with the metadata ``..._rgb.json`` next to each image (timestamp and bounding
      boxes); the labelled test set is the ``test_gt`` directory (or ``test``).
    * ``layout='satmae'`` (SatMAE-style metadata files):
      ``<root>/{train,val,test}_62classes.csv`` with the columns ``category`` (name or
      integer label), ``image_path`` (relative to ``root`` or absolute) and,
      optionally, ``timestamp`` (ISO 8601).

    Samples have the keys ``image`` (float32 ``(3, H, W)``, values 0-255), ``label``
    (int64), ``timestamp`` (int64 ``(year, month, hour)``; release layout, or a CSV
    with timestamps) and ``bbox_xyxy`` (float32 ``(1, 4)``, the labelled object's box
    in pixels of the returned image; release layout).

    If you use this dataset in your research, please cite:

    * https://arxiv.org/abs/1711.07846

    .. versionadded:: 0.1
    """

    bands: tuple[str, ...] = ('R', 'G', 'B')
    rgb_bands: tuple[str, ...] = ('R', 'G', 'B')
    #: Per-channel mean and standard deviation of fMoW-RGB for images scaled to
    #: [0, 1] (:data:`~explora_geo.sensors.FMOW_RGB`).
    mean, std = FMOW_RGB.unit_stats()

    csv_files: ClassVar[dict[str, str]] = {
        'train': 'train_62classes.csv',
        'val': 'val_62classes.csv',
        'test': 'test_62classes.csv',
    }
    layouts = ('release', 'satmae')
    instructions = (
        'fMoW-RGB is distributed through https://github.com/fMoW/dataset (fmow-rgb: '
        'train, val and the labelled test set test_gt). Extract it so that `root` '
        'contains <split>/<category>/<category>_<location>/..._rgb.jpg and .json; '
        "for layout='satmae' also put {train,val,test}_62classes.csv in `root`."
    )

    def __init__(
        self,
        root: Path = 'data',
        split: Literal['train', 'val', 'test'] = 'train',
        layout: Literal['release', 'satmae'] = 'release',
        **kwargs: Unpack[FMoWOptions],
    ) -> None:
        """Initialize a new FMoW instance.

        Args:
            root: root directory of the dataset.
            split: one of ``'train'``, ``'val'`` or ``'test'``.
            layout: ``'release'`` (folders + JSON) or ``'satmae'`` (CSV files).
            **kwargs: *size*, *transforms* and *on_error*, see :class:`FMoWBase`.

        Raises:
            DatasetNotFoundError: if the split directory or CSV is missing.
            FMoWSampleError: if a category or CSV row is invalid (with
                ``on_error='raise'``).
            ValueError: if an argument is invalid.
        """
        super().__init__(root, split, **kwargs)
        if layout not in self.layouts:
            raise ValueError(
                f'layout={layout!r} is invalid; expected one of {self.layouts}'
            )
        self.layout = layout
        self.csv_path: str | None = None
        self.timestamps: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        if layout == 'release':
            self._index_release(self._split_dir(root))
        else:
            self.csv_path = os.path.join(root, self.csv_files[split])
            if not os.path.isfile(self.csv_path):
                raise self._not_found()
            self._index_csv(self.csv_path)

    def _index_release(self, split_root: str) -> None:
        """Index the official folder layout.

        Args:
            split_root: the split directory.
        """
        index = SplitIndex()
        categories = sorted(e.name for e in os.scandir(split_root) if e.is_dir())
        for cat in categories:
            cat_dir = os.path.join(split_root, cat)
            try:
                label = class_index(cat, f'{cat_dir} (category directory)')
            except FMoWSampleError as e:
                index.errors.append(str(e))
                continue
            for loc in sorted(e.name for e in os.scandir(cat_dir) if e.is_dir()):
                loc_dir = os.path.join(cat_dir, loc)
                for name in sorted(os.listdir(loc_dir)):
                    if name.endswith('_rgb.jpg'):
                        index.add(os.path.join(loc_dir, name), label, f'{cat}/{loc}')
        self._install(index, len(categories))

    def _index_csv(self, csv_path: str) -> None:
        """Index a SatMAE-style CSV.

        Args:
            csv_path: the CSV file.
        """
        table = read_metadata_csv(csv_path, ('category', 'image_path'))
        has_time = 'timestamp' in table.columns
        times = table['timestamp'] if has_time else [None] * len(table)
        index = SplitIndex()
        for row, (cat, path, ts) in enumerate(
            zip(table['category'], table['image_path'], times, strict=True)
        ):
            where = csv_row(csv_path, row)
            try:
                label = class_index(cat, where, allow_index=True)
                stamp = parse_timestamp(ts, where) if has_time else None
            except FMoWSampleError as e:
                index.errors.append(str(e))
                continue
            file = os.path.normpath(os.path.join(self.root, path))
            index.add(file, label, os.path.dirname(file), row, stamp)
        self._install(index, len(table))
        self.rows = index.row_array()
        if has_time:
            self.timestamps = index.timestamp_array()

    def _load_sample(self, index: int) -> Sample:
        """Load one image and its label (see :meth:`FMoWBase._load_sample`)."""
        path = str(self.files[index])
        label = int(self.labels[index])
        where = path
        if self.csv_path is not None and self.rows is not None:
            where += f' (listed in {csv_row(self.csv_path, int(self.rows[index]))})'
        image, scale = self._read(path, where)
        sample: Sample = {'label': torch.tensor(label)}
        boxes = None
        if self.layout == 'release':
            stamp, box = self._read_metadata(path[: -len('.jpg')] + '.json', label)
            sample['timestamp'] = torch.tensor(stamp)
            boxes = torch.tensor([box], dtype=torch.float32) * scale
        elif self.timestamps is not None:
            sample['timestamp'] = torch.from_numpy(self.timestamps[index].copy())
        image, boxes = self._resize(image, boxes)
        sample['image'] = image.float()
        if boxes is not None:
            sample['bbox_xyxy'] = boxes
        return sample

    def _read(self, path: str, where: str) -> tuple[Tensor, float]:
        """Decode one JPEG.

        With :attr:`size` set, the JPEG decoder is asked for a reduced image no
        smaller than needed (libjpeg scales by 1/2, 1/4 or 1/8 while decoding), which
        saves most of the work on large fMoW images.

        Args:
            path: the image.
            where: description of the file for error messages.

        Returns:
            uint8 ``(3, H, W)`` tensor and the scale of the decoded image relative to
            the file.

        Raises:
            FMoWSampleError: if the file is missing, cannot be decoded or is not RGB.
        """
        if not os.path.isfile(path):
            raise FMoWSampleError(f'{where}: file not found')
        try:
            with Image.open(path) as im:
                if im.mode != 'RGB':
                    raise FMoWSampleError(
                        f'{where}: expected a 3-band RGB image, found mode {im.mode!r} '
                        f'with {len(im.getbands())} band(s)'
                    )
                width = im.size[0]
                if self.size is not None:
                    im.draft('RGB', (self.size, self.size))
                array = np.array(im)
                scale = im.size[0] / width
        except FMoWSampleError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise FMoWSampleError(f'{where}: cannot decode image ({e})') from None
        return torch.from_numpy(array).permute(2, 0, 1), scale

    def _read_metadata(
        self, path: str, label: int
    ) -> tuple[tuple[int, int, int], list[float]]:
        """Read the timestamp and the labelled box from an fMoW JSON file.

        Args:
            path: the JSON file.
            label: label of the image (from its category directory).

        Returns:
            ``(year, month, hour)`` and the box as pixel ``x1, y1, x2, y2``.

        Raises:
            FMoWSampleError: if the file is missing or invalid, or has no box of the
                image's category.
        """
        category = self.classes[label]
        try:
            with open(path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise FMoWSampleError(f'{path}: metadata file not found') from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FMoWSampleError(f'{path}: invalid JSON ({e})') from None
        if not isinstance(meta, dict) or 'timestamp' not in meta:
            raise FMoWSampleError(f"{path}: missing key 'timestamp'")
        stamp = parse_timestamp(meta['timestamp'], path)
        boxes: Any = meta.get('bounding_boxes')
        if isinstance(boxes, dict):
            boxes = [boxes]
        if not isinstance(boxes, list) or not boxes:
            raise FMoWSampleError(f"{path}: missing or empty key 'bounding_boxes'")
        found = [b.get('category') for b in boxes if isinstance(b, dict)]
        matching = [
            b for b in boxes if isinstance(b, dict) and b.get('category') == category
        ]
        if not matching:
            raise FMoWSampleError(
                f'{path}: no bounding box of category {category!r} (the image '
                f'directory); the boxes have categories {found}'
            )
        box = matching[0].get('box')
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) for v in box)
            or box[2] <= 0
            or box[3] <= 0
        ):
            raise FMoWSampleError(
                f'{path}: invalid box {box!r}; expected [x, y, width, height] with '
                'positive width and height'
            )
        x, y, w, h = (float(v) for v in box)
        return stamp, [x, y, x + w, y + h]

    def _rgb(self, image: Tensor) -> np.ndarray:
        """The three channels as ``(H, W, 3)`` (see :meth:`FMoWBase._rgb`)."""
        return image.permute(1, 2, 0).numpy()


class FMoWTemporal(FMoWBase):
    """fMoW temporal dataset: several images of the same location per sample.

    Every image of :class:`FMoW` (``sensor='rgb'``) or :class:`FMoWSentinel`
    (``sensor='sentinel'``) is an anchor. A sample holds the anchor followed by
    ``num_images - 1`` other images of its location (as in temporal SatMAE): drawn
    at random on every access for training, or drawn once per anchor with a seeded
    generator for evaluation, so that evaluation sees the same images every epoch.
    A location with too few images repeats them (a lone image is repeated).

    Samples have the keys ``image`` (float32 ``(T, C, H, W)``), ``label`` (int64,
    the anchor's) and ``timestamps`` (int64 ``(T, 3)``: year, month, hour). The
    images of a sample must share a size: pass ``size``.

    If you use this dataset in your research, please cite:

    * https://arxiv.org/abs/2207.08051
    * https://arxiv.org/abs/1711.07846

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        root: Path = 'data',
        split: Literal['train', 'val', 'test'] = 'train',
        sensor: Literal['rgb', 'sentinel'] = 'rgb',
        num_images: int = 3,
        random_companions: bool | None = None,
        seed: int = 0,
        layout: Literal['release', 'satmae'] = 'release',
        bands: Sequence[str] | None = None,
        normalization: Literal['none', 'satmae'] = 'none',
        **kwargs: Unpack[FMoWOptions],
    ) -> None:
        """Initialize a new FMoWTemporal instance.

        Args:
            root: root directory of the fMoW-RGB or fMoW-Sentinel data.
            split: one of ``'train'``, ``'val'`` or ``'test'``.
            sensor: ``'rgb'`` for :class:`FMoW`, ``'sentinel'`` for
                :class:`FMoWSentinel`.
            num_images: images per sample, ``T``.
            random_companions: draw new companions on every access; default True
                for the train split and False otherwise.
            seed: seed of the fixed companions (when not random).
            layout: on-disk layout of fMoW-RGB (see :class:`FMoW`).
            bands: Sentinel-2 bands to load (see :class:`FMoWSentinel`).
            normalization: Sentinel-2 scaling (see :class:`FMoWSentinel`).
            **kwargs: *size*, *transforms* and *on_error*, see :class:`FMoWBase`;
                *size* and *on_error* also apply to the images read.

        Raises:
            DatasetNotFoundError: if the data is not found.
            FMoWSampleError: if the metadata has no timestamps or is invalid.
            ValueError: if an argument is invalid.
        """
        super().__init__(root, split, **kwargs)
        if num_images < 1:
            raise ValueError(f'num_images={num_images} is invalid; expected >= 1')
        self.sensor = sensor
        self.num_images = num_images
        self.random_companions = (
            split == 'train' if random_companions is None else random_companions
        )
        self.seed = seed
        self.dataset: FMoW | FMoWSentinel
        if sensor == 'rgb':
            if bands is not None or normalization != 'none':
                raise ValueError(
                    "bands and normalization apply to sensor='sentinel' only"
                )
            self.dataset = FMoW(
                root, split, layout=layout, size=self.size, on_error=self.on_error
            )
            if layout == 'satmae' and self.dataset.timestamps is None:
                raise FMoWSampleError(
                    f"{self.dataset.csv_path}: missing column 'timestamp', which "
                    'FMoWTemporal needs'
                )
        elif sensor == 'sentinel':
            if layout != 'release':
                raise ValueError("layout applies to sensor='rgb' only")
            self.dataset = FMoWSentinel(
                root,
                split,
                bands=FMoWSentinel.default_bands if bands is None else bands,
                normalization=normalization,
                size=self.size,
                on_error=self.on_error,
            )
        else:
            raise ValueError(
                f"sensor={sensor!r} is invalid; expected 'rgb' or 'sentinel'"
            )
        self.files = self.dataset.files
        self.labels = self.dataset.labels
        self.locations = self.dataset.locations
        codes, _ = pd.factorize(self.locations)
        # Members of every location as one sorted index array plus offsets.
        self._group = codes.astype(np.int64)
        self._members = np.argsort(codes, kind='stable')
        counts = np.bincount(codes, minlength=codes.max() + 1 if len(codes) else 0)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])

    def companions(self, index: int) -> list[int]:
        """Choose the other images of a sample.

        Args:
            index: index of the anchor image.

        Returns:
            ``num_images - 1`` indices of images of the anchor's location.
        """
        k = self.num_images - 1
        group = self._group[index]
        members = self._members[self._offsets[group] : self._offsets[group + 1]]
        others = torch.from_numpy(members[members != index])
        if k == 0:
            return []
        if len(others) == 0:
            return [index] * k
        generator = None
        if not self.random_companions:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        chosen = others[torch.randperm(len(others), generator=generator)][:k]
        if len(chosen) < k:
            extra = torch.randint(len(others), (k - len(chosen),), generator=generator)
            chosen = torch.cat([chosen, others[extra]])
        return [int(j) for j in chosen]

    def _load_sample(self, index: int) -> Sample:
        """Load the anchor and its companions (see :meth:`FMoWBase._load_sample`)."""
        samples = [
            self.dataset._load_sample(j) for j in [index, *self.companions(index)]
        ]
        shapes = {tuple(s['image'].shape) for s in samples}
        if len(shapes) > 1:
            raise FMoWSampleError(
                f'{self.files[index]}: the images of location {str(self.locations[index])!r} '
                f'differ in shape {sorted(shapes)}; pass size=... to resize them'
            )
        return {
            'image': torch.stack([s['image'] for s in samples]),
            'label': samples[0]['label'],
            'timestamps': torch.stack([s['timestamp'] for s in samples]),
        }

    def _rgb(self, image: Tensor) -> np.ndarray:
        """The RGB channels of one frame, as the per-image dataset selects them."""
        return self.dataset._rgb(image)
