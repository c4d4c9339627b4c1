"""NAIP land-cover classification (66 classes)."""

import abc
import os
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.errors import RasterioError
from torch import Tensor
from torchgeo.datasets import DatasetNotFoundError, RGBBandsMissingError
from torchgeo.datasets.utils import Path, Sample

from .image_table import (
    ImageTableDataset,
    InvalidSampleError,
    OnError,
    read_table,
    table_records,
)


class NAIPChips(ImageTableDataset):
    """Abstract base class for tables of NAIP GeoTIFF chips.

    .. versionadded:: 0.1
    """

    splits: ClassVar[tuple[str, ...]] = ('train', 'val', 'test')
    all_bands: tuple[str, ...] = ('R', 'G', 'B', 'NIR')
    rgb_bands: tuple[str, ...] = ('R', 'G', 'B')

    def __init__(
        self,
        root: Path = 'data',
        split: str = 'train',
        bands: Sequence[str] = rgb_bands,
        transforms: Callable[[Sample], Sample] | None = None,
        on_error: OnError = 'raise',
    ) -> None:
        """Initialize a new NAIP chips dataset instance.

        Args:
            root: Root directory of the dataset.
            split: One of ``'train'``, ``'val'``, ``'test'``.
            bands: Bands to load, from ``('R', 'G', 'B', 'NIR')``.
            transforms: A function/transform that takes an input sample
                and returns a transformed version.
            on_error: ``'raise'`` to stop at the first bad sample (missing or
                unreadable chip, unknown class) with an error naming it;
                ``'skip'`` to leave bad samples out and count them in a warning
                (see :class:`~explora_geo.datasets.image_table.ImageTableDataset`).

        Raises:
            ValueError: If *split* or a band is invalid, or a table lacks a
                required column or has an invalid class list.
            DatasetNotFoundError: If a table of the split is not found.
            InvalidSampleError: If a row's label is invalid and *on_error* is
                ``'raise'``.
        """
        if split not in self.splits:
            raise ValueError(f'split must be one of {self.splits}, got {split!r}')
        for band in bands:
            if band not in self.all_bands:
                raise ValueError(f'Invalid band {band!r}; choose from {self.all_bands}')
        super().__init__(transforms=transforms, on_error=on_error)
        self.root = root
        self.split = split
        self.bands = tuple(bands)
        self._index()

    @abc.abstractmethod
    def _index(self) -> None:
        """Check that the split's tables are present and install its records.

        Implementations call :meth:`_verify` with the tables they read, then
        :meth:`_set_records`.
        """

    def _verify(self, files: Sequence[str]) -> None:
        """Check that the tables are present.

        Args:
            files: Files that must exist under *root*.

        Raises:
            DatasetNotFoundError: If a file is missing.
        """
        for name in files:
            if not os.path.isfile(os.path.join(self.root, name)):
                error = DatasetNotFoundError(self)
                error.args = (
                    f"{error.args[0]} Expected '{os.path.join(self.root, name)}': "
                    'NAIP land cover is not distributed as files; write the chips '
                    'as GeoTIFFs with classes.csv (label,name) and '
                    '<split>.csv (path,label) tables, as described in '
                    'docs/datasets_wilds.md.',
                )
                raise error

    def _records(self, table_path: str, table: pd.DataFrame) -> pd.DataFrame:
        """Build the sample records of a split table.

        Args:
            table_path: The table's file.
            table: The table, with a ``path`` column.

        Returns:
            Records with columns ``path`` (joined to *root*), ``table``, ``line``.
        """
        paths = [os.path.join(self.root, str(p)) for p in table['path']]
        return table_records(table_path, table, paths)

    def _read_chip(self, index: int) -> Tensor:
        """Read the selected bands of a chip.

        Args:
            index: Index of the sample.

        Returns:
            The chip, float (len(bands), H, W).

        Raises:
            FileNotFoundError: If the file is missing.
            InvalidSampleError: If the file cannot be read or has too few bands.
        """
        path = self._check_exists(index)
        indexes = [self.all_bands.index(b) + 1 for b in self.bands]
        try:
            with rasterio.open(path) as src:
                if src.count < max(indexes):
                    raise InvalidSampleError(
                        f'Chip {self._where(index)} has {src.count} band(s); band '
                        f'{self.all_bands[max(indexes) - 1]!r} (band {max(indexes)}) '
                        'was requested'
                    )
                array = src.read(indexes)
        except RasterioError as e:
            raise InvalidSampleError(
                f'Cannot read chip {self._where(index)}: {e}'
            ) from e
        return torch.from_numpy(array.astype(np.float32))

    def _rgb(self, image: Tensor) -> Tensor:
        """Select the R, G, B bands of a chip (see :meth:`ImageTableDataset._rgb`).

        Raises:
            RGBBandsMissingError: If *bands* does not include R, G and B.
        """
        if not all(band in self.bands for band in self.rgb_bands):
            raise RGBBandsMissingError()
        return image[[self.bands.index(band) for band in self.rgb_bands]]


class NAIPLandCover(NAIPChips):
    """NAIP land-cover classification dataset.

    Chips of USDA National Agriculture Imagery Program (NAIP) aerial imagery,
    each labelled with one of 66 land-cover classes, as used in the ExPLoRA paper
    (244,471 training and 55,529 validation chips). The paper does not publish
    files, so this dataset defines a layout that any such collection of chips can
    be written in (``<root>/``):

    * ``classes.csv``: columns ``label`` (class index, 0 .. K-1) and ``name``;
      K = 66 for the paper's dataset
    * ``train.csv``, ``val.csv`` and optionally ``test.csv``: columns ``path``
      (chip file, relative to *root*) and ``label`` (class index or class name)
    * the chips: GeoTIFFs with bands R, G, B and optionally NIR (NAIP band order)

    Samples are ``{'image': float (C, H, W), 'label': int64 ()}`` with the bands
    selected by *bands*. Arguments: see :class:`NAIPChips`.

    .. versionadded:: 0.1
    """

    def _index(self) -> None:
        """Read the class list and the split's table, with its labels."""
        self._verify(['classes.csv', f'{self.split}.csv'])
        self.classes = self._read_classes()

        table_path = os.path.join(self.root, f'{self.split}.csv')
        table = read_table(table_path, ['path', 'label'], dtype={'label': str})
        labels, problems = self._parse_labels(table['label'])
        problems[table['path'].isna()] = "missing file name: column 'path' is empty"
        records = self._records(table_path, table)
        records['label'] = labels
        self._set_records(records, problems)

    def _read_classes(self) -> list[str]:
        """Read the class names, ordered by class index, from ``classes.csv``.

        Returns:
            The class names.

        Raises:
            ValueError: If the indices are not 0 .. K-1 each once, or a name
                repeats (the message names the file and the values).
        """
        path = os.path.join(self.root, 'classes.csv')
        table = read_table(path, ['label', 'name'], dtype={'name': str})
        indices = pd.to_numeric(table['label'], errors='coerce')
        if indices.isna().any() or not np.array_equal(
            np.sort(indices.to_numpy()), np.arange(len(table))
        ):
            raise ValueError(
                f"Table '{path}': column 'label' must hold the class indices "
                f'0 .. {len(table) - 1}, each once; found {list(table["label"])}'
            )
        repeated = table['name'][table['name'].duplicated()]
        if len(repeated):
            raise ValueError(
                f"Table '{path}': class name {repeated.iat[0]!r} appears more than once"
            )
        return [str(name) for name in table.sort_values('label')['name']]

    def _parse_labels(self, values: pd.Series) -> tuple[np.ndarray, pd.Series]:
        """Resolve a column of class indices or class names to class indices.

        Args:
            values: The ``label`` column, as text.

        Returns:
            The labels (``-1`` where invalid) and, per row, ``''`` or a problem.
        """
        classes = list(self.classes or [])
        numeric = pd.to_numeric(values, errors='coerce')
        by_index = numeric.where(
            (numeric == np.floor(numeric)) & (numeric >= 0) & (numeric < len(classes))
        )
        by_name = values.map({name: i for i, name in enumerate(classes)})
        labels = by_index.fillna(by_name)
        problems = pd.Series('', index=values.index, dtype=object)
        bad = labels.isna()
        problems[bad] = [
            f'invalid label: {value!r} is neither a class index in '
            f'[0, {len(classes) - 1}] nor a class name of classes.csv'
            for value in values[bad]
        ]
        return labels.fillna(-1).to_numpy(dtype=np.int64), problems

    def _load_sample(self, index: int) -> Sample:
        """The chip and its label (see :meth:`ImageTableDataset._load_sample`)."""
        label = torch.tensor(self.records['label'].iat[index], dtype=torch.long)
        return {'image': self._read_chip(index), 'label': label}


class NAIPLandCoverUnlabeled(NAIPChips):
    """NAIP land-cover chips without labels, for self-supervised pre-training.

    Reads the chips of a split (the ExPLoRA paper pre-trains on ``train``) in the
    layout of :class:`NAIPLandCover`; only the ``path`` column is required and no
    class list is needed.

    Samples are ``{'image': float (C, H, W)}``. Arguments: see :class:`NAIPChips`.

    .. versionadded:: 0.1
    """

    def _index(self) -> None:
        """Read the split's table."""
        self._verify([f'{self.split}.csv'])
        table_path = os.path.join(self.root, f'{self.split}.csv')
        table = read_table(table_path, ['path'])
        problems = pd.Series('', index=table.index, dtype=object)
        problems[table['path'].isna()] = "missing file name: column 'path' is empty"
        self._set_records(self._records(table_path, table), problems)

    def _load_sample(self, index: int) -> Sample:
        """The chip (see :meth:`ImageTableDataset._load_sample`)."""
        return {'image': self._read_chip(index)}
