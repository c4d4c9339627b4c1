"""fMoW-Sentinel: 13-band Sentinel-2 images of the fMoW locations."""

import os
from collections.abc import Sequence
from typing import ClassVar, Literal, Unpack

import numpy as np
import rasterio
import rasterio.errors
import torch
from torch import Tensor
from torchgeo.datasets import RGBBandsMissingError
from torchgeo.datasets.utils import Path, Sample

from ..sensors import SENTINEL2
from .fmow_base import FMoWBase, FMoWOptions, SplitIndex
from .fmow_metadata import (
    FMoWSampleError,
    class_index,
    csv_row,
    parse_timestamp,
    read_metadata_csv,
)


class FMoWSentinel(FMoWBase):
    """fMoW-Sentinel dataset.

    `fMoW-Sentinel <https://purl.stanford.edu/vg497cb6002>`__ pairs every location of
    the Functional Map of the World (fMoW) with a time series of Sentinel-2 L1C
    composites (13 bands, 10 m grid, sizes vary). It was introduced with SatMAE and
    is used for multispectral ExPLoRA pre-training and fine-tuning.

    Dataset format:

    * ``train.csv``, ``val.csv``, ``test_gt.csv`` with the columns ``category``,
      ``location_id``, ``image_id``, ``timestamp`` (ISO 8601) and ``polygon``
    * images ``fmow-sentinel/<split>/<category>/<category>_<location_id>/``
      ``<category>_<location_id>_<image_id>.tif`` (the split directory of the test
      set is ``test_gt`` or ``test``), one 13-band uint16 GeoTIFF each, bands in the
      order B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B10 B11 B12
    * 62 classes (:data:`~explora_geo.datasets.fmow_metadata.FMOW_CLASSES`)

    Samples have the keys ``image`` (float32 ``(C, H, W)``, the selected bands),
    ``label`` (int64) and ``timestamp`` (int64 ``(year, month, hour)``).

    With ``normalization='satmae'`` every band is scaled as in SatMAE:
    ``clip((x - (mean - 2 std)) / (4 std), 0, 1)`` with the per-band statistics
    :attr:`mean` and :attr:`std`; otherwise the raw digital numbers are returned.

    If you use this dataset in your research, please cite:

    * https://arxiv.org/abs/2207.08051
    * https://arxiv.org/abs/1711.07846

    .. versionadded:: 0.1
    """

    all_bands: tuple[str, ...] = (
        'B1',
        'B2',
        'B3',
        'B4',
        'B5',
        'B6',
        'B7',
        'B8',
        'B8A',
        'B9',
        'B10',
        'B11',
        'B12',
    )
    #: The 10 bands used by SatMAE and ExPLoRA (B1, B9 and B10 dropped).
    default_bands: tuple[str, ...] = tuple(
        b for b in all_bands if b not in ('B1', 'B9', 'B10')
    )
    rgb_bands: tuple[str, ...] = ('B4', 'B3', 'B2')

    #: Per-band mean and standard deviation of the fMoW-Sentinel training set
    #: (digital numbers, :data:`~explora_geo.sensors.SENTINEL2`).
    mean, std = SENTINEL2.band_stats()

    csv_files: ClassVar[dict[str, str]] = {
        'train': 'train.csv',
        'val': 'val.csv',
        'test': 'test_gt.csv',
    }
    image_dir = 'fmow-sentinel'
    required_columns = ('category', 'location_id', 'image_id', 'timestamp')
    instructions = (
        'fMoW-Sentinel is available from the Stanford Digital Repository, '
        'https://purl.stanford.edu/vg497cb6002. Put train.csv, val.csv '
        'and test_gt.csv in `root` and extract the images so that they are found at '
        '<root>/fmow-sentinel/<split>/<category>/<category>_<location_id>/'
        '<category>_<location_id>_<image_id>.tif.'
    )

    def __init__(
        self,
        root: Path = 'data',
        split: Literal['train', 'val', 'test'] = 'train',
        bands: Sequence[str] = default_bands,
        normalization: Literal['none', 'satmae'] = 'none',
        **kwargs: Unpack[FMoWOptions],
    ) -> None:
        """Initialize a new FMoWSentinel instance.

        Args:
            root: root directory with the CSV files and the ``fmow-sentinel`` folder.
            split: one of ``'train'``, ``'val'`` or ``'test'`` (``test_gt.csv``).
            bands: band names to load, in the order wanted (default: the 10 bands
                without B1, B9, B10).
            normalization: ``'none'`` for raw digital numbers, ``'satmae'`` for the
                SatMAE scaling to [0, 1].
            **kwargs: *size*, *transforms* and *on_error*, see :class:`FMoWBase`.

        Raises:
            DatasetNotFoundError: if the CSV or the image folder is missing.
            FMoWSampleError: if the CSV lacks a column or has a bad row (with
                ``on_error='raise'``).
            ValueError: if an argument is invalid.
        """
        super().__init__(root, split, **kwargs)
        if isinstance(bands, str) or not bands:
            raise ValueError(
                f'bands={bands!r} is invalid; expected a sequence of band names'
            )
        for band in bands:
            if band not in self.all_bands:
                raise ValueError(
                    f'{band!r} is an invalid band name; expected names from {self.all_bands}'
                )
        if len(set(bands)) != len(bands):
            raise ValueError(f'bands={list(bands)} contains duplicates')
        if normalization not in ('none', 'satmae'):
            raise ValueError(
                f"normalization={normalization!r} is invalid; expected 'none' or 'satmae'"
            )
        self.bands = tuple(bands)
        self.normalization = normalization
        self.band_indexes = [self.all_bands.index(b) + 1 for b in self.bands]
        mean = np.array([self.mean[b] for b in self.bands], dtype=np.float32)
        std = np.array([self.std[b] for b in self.bands], dtype=np.float32)
        self._low = (mean - 2 * std).reshape(-1, 1, 1)
        self._range = (4 * std).reshape(-1, 1, 1)

        self.csv_path = os.path.join(root, self.csv_files[split])
        if not os.path.isfile(self.csv_path):
            raise self._not_found()
        image_root = self._split_dir(os.path.join(root, self.image_dir))
        self._index(image_root)

    def _index(self, image_root: str) -> None:
        """Read the CSV of the split into per-image arrays.

        Args:
            image_root: directory of the split's images.
        """
        table = read_metadata_csv(self.csv_path, self.required_columns)
        index = SplitIndex()
        columns = (table[c] for c in self.required_columns)
        for row, (cat, loc, img, ts) in enumerate(zip(*columns, strict=True)):
            where = csv_row(self.csv_path, row)
            try:
                label = class_index(cat, where)
                stamp = parse_timestamp(ts, where)
            except FMoWSampleError as e:
                index.errors.append(str(e))
                continue
            location = f'{cat}_{loc}'
            file = os.path.join(image_root, cat, location, f'{location}_{img}.tif')
            index.add(file, label, location, row, stamp)
        self._install(index, len(table))
        self.timestamps = index.timestamp_array()
        self.rows = index.row_array()

    def _load_sample(self, index: int) -> Sample:
        """Load ``image``, ``label`` and ``timestamp`` (see :meth:`FMoWBase._load_sample`)."""
        path = str(self.files[index])
        where = f'{path} (listed in {csv_row(self.csv_path, int(self.rows[index]))})'
        data = self._read(path, where)
        if self.normalization == 'satmae':
            # In numpy: on one small image torch's intra-op thread pool costs more
            # than the arithmetic when loading in the main process.
            data = np.clip((data - self._low) / self._range, 0, 1)
        image, _ = self._resize(torch.from_numpy(data))
        return {
            'image': image,
            'label': torch.tensor(self.labels[index]),
            'timestamp': torch.from_numpy(self.timestamps[index].copy()),
        }

    def _read(self, path: str, where: str) -> np.ndarray:
        """Read the selected bands of one GeoTIFF and check them.

        Args:
            path: the GeoTIFF.
            where: description of the file for error messages.

        Returns:
            float32 ``(C, H, W)`` array of digital numbers.

        Raises:
            FMoWSampleError: if the file is missing, unreadable, does not have 13
                bands, or has NaN or nodata pixels in a selected band.
        """
        if not os.path.isfile(path):
            raise FMoWSampleError(f'{where}: file not found')
        try:
            with rasterio.open(path, driver='GTiff') as src:
                if src.count != len(self.all_bands):
                    raise FMoWSampleError(
                        f'{where}: expected {len(self.all_bands)} bands '
                        f'({" ".join(self.all_bands)}), found {src.count}'
                    )
                data = src.read(self.band_indexes)
                nodata = src.nodata
        except rasterio.errors.RasterioError as e:
            detail = f'{e}: {e.__cause__}' if e.__cause__ is not None else str(e)
            raise FMoWSampleError(f'{where}: cannot read GeoTIFF ({detail})') from None
        bad: np.ndarray | None = None
        if np.issubdtype(data.dtype, np.floating):
            bad = np.isnan(data)
        if nodata is not None and not np.isnan(nodata):
            bad = data == nodata if bad is None else bad | (data == nodata)
        if bad is not None and bad.any():
            counts = bad.sum(axis=(1, 2))
            listed = ', '.join(
                f'{band}: {n}' for band, n in zip(self.bands, counts, strict=True) if n
            )
            raise FMoWSampleError(
                f'{where}: NaN or nodata ({nodata}) pixels in the selected bands '
                f'({listed} of {data.shape[1] * data.shape[2]} pixels)'
            )
        return data.astype(np.float32)

    def _rgb(self, image: Tensor) -> np.ndarray:
        """B4, B3 and B2 for display (see :meth:`FMoWBase._rgb`)."""
        if not all(b in self.bands for b in self.rgb_bands):
            raise RGBBandsMissingError()
        idx = [self.bands.index(b) for b in self.rgb_bands]
        return image[idx].permute(1, 2, 0).numpy()
