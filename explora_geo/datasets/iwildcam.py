"""iWildCam2020-WILDS camera-trap species classification."""

import os
from typing import ClassVar

import numpy as np
import pandas as pd

from .image_table import integer_labels, read_table, table_records
from .wilds import WILDSClassificationDataset, WILDSUnlabeledDataset


def _filenames(table: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """Return a table's file names and, per row, a problem if the name is empty.

    Args:
        table: The table.
        column: Column holding the file names.

    Returns:
        The names as strings, and per row ``''`` or a problem description.
    """
    empty = table[column].isna()
    problems = pd.Series('', index=table.index, dtype=object)
    problems[empty] = f'missing file name: column {column!r} is empty'
    return table[column].where(~empty, '').astype(str), problems


class IWildCam(WILDSClassificationDataset):
    """iWildCam2020-WILDS dataset (v2.0).

    Camera-trap photographs from 323 locations, each labelled with one of 182
    animal species (or empty). The official WILDS splits hold out whole camera
    locations: ``train``; ``val`` and ``test`` (out-of-distribution, unseen
    locations); ``id_val`` and ``id_test`` (in-distribution, training locations).

    Dataset format (``<root>/iwildcam_v2.0/``):

    * ``metadata.csv``: one row per image; columns ``split``, ``filename`` and
      ``y`` (class index) are used
    * ``categories.csv``: columns ``y`` (class index, empty for categories absent
      from the release), ``category_id`` and ``name``
    * ``train/<filename>``: the JPEG images of all splits

    Samples are ``{'image': float (3, H, W) 0-255, 'label': int64 ()}``; images keep
    their stored size.

    If you use this dataset in your research, please cite:

    * https://arxiv.org/abs/2004.10340
    * https://arxiv.org/abs/2012.07421

    Constructor arguments: see :class:`~explora_geo.datasets.wilds.WILDSImageDataset`.

    .. versionadded:: 0.1
    """

    wilds_name = 'iwildcam'
    splits: ClassVar[tuple[str, ...]] = ('train', 'val', 'test', 'id_val', 'id_test')
    default_version = '2.0'

    def _index(self) -> None:
        """Read the class list and the rows of the split, with their labels."""
        self._verify(['metadata.csv', 'categories.csv'])
        self.classes = self._read_classes()

        table_path = os.path.join(self.data_dir, 'metadata.csv')
        table = read_table(table_path, ['split', 'filename', 'y'])
        table = table[table['split'] == self.split]
        filenames, problems = _filenames(table, 'filename')
        labels, label_problems = integer_labels(table['y'], len(self.classes))
        problems = problems.where(problems != '', label_problems)
        records = table_records(
            table_path,
            table,
            [os.path.join(self.data_dir, 'train', f) for f in filenames],
            label=labels,
        )
        self._set_records(records, problems)

    def _read_classes(self) -> list[str]:
        """Read the class names, ordered by class index, from ``categories.csv``.

        Returns:
            The class names.

        Raises:
            ValueError: If the class indices are not the integers 0 .. K-1, each
                once (the message names the file and the offending values).
        """
        path = os.path.join(self.data_dir, 'categories.csv')
        table = read_table(path, ['y', 'name'])
        table = table[table['y'].notna()]
        indices = pd.to_numeric(table['y'], errors='coerce')
        expected = np.arange(len(table))
        if indices.isna().any() or not np.array_equal(
            np.sort(indices.to_numpy()), expected
        ):
            raise ValueError(
                f"Table '{path}': column 'y' must hold the class indices "
                f'0 .. {len(table) - 1}, each once; found {sorted(table["y"])}'
            )
        return [str(name) for name in table.sort_values('y')['name']]


class IWildCamUnlabeled(WILDSUnlabeledDataset):
    """iWildCam images without labels, for self-supervised pre-training.

    Reads either the WILDS unlabeled release (``split='extra_unlabeled'``:
    ``<root>/iwildcam_unlabeled_v1.0/metadata.csv`` with a ``uid`` column and the
    images ``images/<uid>.jpg``) or the images of a split of the labeled release
    (``'train'``, ``'val'``, ...), ignoring its labels. Pre-training on the labeled
    training images did better than on the unlabeled release in the ExPLoRA paper.

    Samples are ``{'image': float (3, H, W) 0-255}``.

    By default the ``'extra_unlabeled'`` split is read; constructor arguments: see
    :class:`~explora_geo.datasets.wilds.WILDSImageDataset`.

    .. versionadded:: 0.1
    """

    wilds_name = 'iwildcam'
    unlabeled_splits: ClassVar[tuple[str, ...]] = ('extra_unlabeled',)
    splits: ClassVar[tuple[str, ...]] = (*unlabeled_splits, *IWildCam.splits)
    default_split = 'extra_unlabeled'
    default_version = IWildCam.default_version

    def _index(self) -> None:
        """Read the image names of the split."""
        self._verify(['metadata.csv'])
        table_path = os.path.join(self.data_dir, 'metadata.csv')
        if self.from_unlabeled_release:
            table = read_table(table_path, ['uid'])
            names, problems = _filenames(table, 'uid')
            paths = [os.path.join(self.data_dir, 'images', f'{n}.jpg') for n in names]
        else:
            table = read_table(table_path, ['split', 'filename'])
            table = table[table['split'] == self.split]
            names, problems = _filenames(table, 'filename')
            paths = [os.path.join(self.data_dir, 'train', n) for n in names]
        records = table_records(table_path, table, paths)
        self._set_records(records, problems)
