"""Camelyon17-WILDS tumour classification of histopathology patches."""

import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd

from .image_table import integer_labels, read_table, table_records
from .wilds import (
    UNLABELED_SPLITS,
    WILDSClassificationDataset,
    WILDSUnlabeledDataset,
)

#: Hospital (``center``) whose slides form the out-of-distribution validation split.
VAL_CENTER = 1
#: Hospital (``center``) whose slides form the test split.
TEST_CENTER = 2

_COORDINATES = ('patient', 'node', 'x_coord', 'y_coord')


def _patch_paths(data_dir: str, table: pd.DataFrame) -> list[str]:
    """Build the patch file paths of a Camelyon17 metadata table.

    Args:
        data_dir: The release folder.
        table: Rows with columns ``patient`` (zero-padded, as text), ``node``,
            ``x_coord`` and ``y_coord``.

    Returns:
        ``<data_dir>/patches/patient_<p>_node_<n>/patch_patient_<p>_node_<n>_x_<x>_y_<y>.png``
        for each row.
    """
    return [
        os.path.join(
            data_dir,
            'patches',
            f'patient_{p}_node_{n}',
            f'patch_patient_{p}_node_{n}_x_{x}_y_{y}.png',
        )
        for p, n, x, y in table.loc[:, list(_COORDINATES)].itertuples(
            index=False, name=None
        )
    ]


def _official_splits(table: pd.DataFrame) -> np.ndarray:
    """Assign the official WILDS split to each row of the labeled metadata.

    Hospital :data:`VAL_CENTER` is the OOD validation split and
    :data:`TEST_CENTER` the test split; the other hospitals' rows are ``train``
    (``split`` 0) or ``id_val`` (``split`` 1).

    Args:
        table: Rows with columns ``center`` and ``split``.

    Returns:
        The split name of each row (``''`` for rows in no split).
    """
    center = pd.to_numeric(table['center'], errors='coerce').to_numpy()
    split = pd.to_numeric(table['split'], errors='coerce').to_numpy()
    return np.select(
        [center == VAL_CENTER, center == TEST_CENTER, split == 0, split == 1],
        ['val', 'test', 'train', 'id_val'],
        default='',
    )


class Camelyon17(WILDSClassificationDataset):
    """Camelyon17-WILDS dataset (v1.0).

    96 x 96 px patches of lymph-node histopathology slides from five hospitals,
    labelled 1 if the central 32 x 32 px region contains tumour tissue. The
    official WILDS splits hold out hospitals: ``train`` and ``id_val`` (hospitals
    0, 3, 4), ``val`` (hospital 1, out of distribution) and ``test`` (hospital 2).

    Dataset format (``<root>/camelyon17_v1.0/``):

    * ``metadata.csv``: one row per patch; columns ``patient`` (zero-padded),
      ``node``, ``x_coord``, ``y_coord``, ``tumor``, ``center`` and ``split``
    * ``patches/patient_<p>_node_<n>/patch_patient_<p>_node_<n>_x_<x>_y_<y>.png``

    Samples are ``{'image': float (3, 96, 96) 0-255, 'label': int64 ()}``.

    If you use this dataset in your research, please cite:

    * https://doi.org/10.1109/TMI.2018.2867350
    * https://arxiv.org/abs/2012.07421

    Constructor arguments: see :class:`~explora_geo.datasets.wilds.WILDSImageDataset`.

    .. versionadded:: 0.1
    """

    wilds_name = 'camelyon17'
    splits: ClassVar[tuple[str, ...]] = ('train', 'id_val', 'val', 'test')
    default_version = '1.0'
    classes: Sequence[str] = ('normal', 'tumor')

    def _index(self) -> None:
        """Read the rows of the split from ``metadata.csv``, with their labels."""
        self._verify(['metadata.csv'])
        table_path = os.path.join(self.data_dir, 'metadata.csv')
        table = read_table(
            table_path,
            [*_COORDINATES, 'tumor', 'center', 'split'],
            dtype={'patient': str},
        )
        table = table[_official_splits(table) == self.split]
        labels, problems = integer_labels(table['tumor'], len(self.classes))
        records = table_records(
            table_path, table, _patch_paths(self.data_dir, table), label=labels
        )
        self._set_records(records, problems)


class Camelyon17Unlabeled(WILDSUnlabeledDataset):
    """Camelyon17 patches without labels, for self-supervised pre-training.

    Reads the WILDS unlabeled release (``<root>/camelyon17_unlabeled_v1.0/``, same
    layout as the labeled one; splits by hospital: ``train_unlabeled`` (hospitals
    0, 3, 4), ``val_unlabeled`` (1), ``test_unlabeled`` (2)), or the patches of a
    split of the labeled release, ignoring its labels. The ExPLoRA paper
    pre-trains on ``train_unlabeled``.

    Samples are ``{'image': float (3, 96, 96) 0-255}``.

    By default the ``'train_unlabeled'`` split is read; constructor arguments: see
    :class:`~explora_geo.datasets.wilds.WILDSImageDataset`.

    .. versionadded:: 0.1
    """

    wilds_name = 'camelyon17'
    unlabeled_splits = UNLABELED_SPLITS
    splits: ClassVar[tuple[str, ...]] = (*UNLABELED_SPLITS, *Camelyon17.splits)
    default_split = 'train_unlabeled'
    default_version = '1.0'

    def _index(self) -> None:
        """Read the rows of the split from ``metadata.csv``."""
        self._verify(['metadata.csv'])
        table_path = os.path.join(self.data_dir, 'metadata.csv')
        if self.from_unlabeled_release:
            table = read_table(
                table_path, [*_COORDINATES, 'center'], dtype={'patient': str}
            )
            center = pd.to_numeric(table['center'], errors='coerce').to_numpy()
            names = np.select(
                [center == VAL_CENTER, center == TEST_CENTER],
                ['val_unlabeled', 'test_unlabeled'],
                default='train_unlabeled',
            )
        else:
            table = read_table(
                table_path, [*_COORDINATES, 'center', 'split'], dtype={'patient': str}
            )
            names = _official_splits(table)
        table = table[names == self.split]
        records = table_records(table_path, table, _patch_paths(self.data_dir, table))
        self._set_records(records)
