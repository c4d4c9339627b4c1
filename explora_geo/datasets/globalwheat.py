"""GlobalWheat-WILDS wheat-head detection."""

import math
import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torchgeo.datasets.utils import Sample

from .image_table import InvalidSampleError, read_table, table_records
from .wilds import UNLABELED_SPLITS, WILDSImageDataset, WILDSUnlabeledDataset

#: Value of ``BoxesString`` for an image without any wheat head.
NO_BOX = 'no_box'


def parse_boxes(text: object) -> tuple[np.ndarray, str]:
    """Parse a GlobalWheat ``BoxesString``: ``'x1 y1 x2 y2;x1 y1 x2 y2;...'``.

    Args:
        text: The cell value; ``'no_box'`` for an image without boxes.

    Returns:
        The boxes as float32 (N, 4) in pixel ``x1, y1, x2, y2`` and ``''``, or an
        empty array and the description of what is wrong with *text*.

    .. versionadded:: 0.1
    """
    empty = np.zeros((0, 4), dtype=np.float32)
    if not isinstance(text, str) or not text.strip():
        return empty, f'invalid boxes: empty BoxesString (use {NO_BOX!r})'
    if text.strip() == NO_BOX:
        return empty, ''
    boxes = []
    for part in text.split(';'):
        try:
            values = [float(v) for v in part.split()]
        except ValueError:
            return empty, f'invalid boxes: {part!r} is not four numbers'
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            return empty, f'invalid boxes: {part!r} is not four numbers'
        x1, y1, x2, y2 = values
        if x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1:
            return empty, (
                f'invalid boxes: {part!r} is not x1 y1 x2 y2 with 0 <= x1 < x2 '
                'and 0 <= y1 < y2'
            )
        boxes.append(values)
    return np.asarray(boxes, dtype=np.float32), ''


class GlobalWheat(WILDSImageDataset):
    """GlobalWheat-WILDS dataset (v1.1), wheat-head detection.

    1024 x 1024 px RGB photographs of wheat canopies from 47 acquisition
    sessions in 12 countries, with a box around every wheat head. The official
    WILDS splits hold out sessions: ``train``, ``val`` and ``test`` (out of
    distribution), ``id_val`` and ``id_test`` (in distribution).

    Dataset format (``<root>/globalwheat_v1.1/``):

    * ``official_train.csv``, ``official_val.csv``, ``official_test.csv``,
      ``fixed_train_val.csv`` (``id_val``), ``fixed_train_test.csv``
      (``id_test``): columns ``image_name``, ``BoxesString`` and ``domain``;
      ``BoxesString`` is ``x1 y1 x2 y2`` boxes in pixels joined by ``;``, or
      ``no_box``
    * ``images/<image_name>``: PNG images

    Samples are ``{'image': float (3, H, W) 0-255, 'bbox_xyxy': float (N, 4),
    'label': int64 (N,)}``, every label 1 (wheat head; 0 is the background class
    of torchvision's detectors).

    If you use this dataset in your research, please cite:

    * https://doi.org/10.34133/2020/3521852
    * https://arxiv.org/abs/2105.07660

    Constructor arguments: see :class:`~explora_geo.datasets.wilds.WILDSImageDataset`.

    .. versionadded:: 0.1
    """

    split_files: ClassVar[dict[str, str]] = {
        'train': 'official_train.csv',
        'val': 'official_val.csv',
        'test': 'official_test.csv',
        'id_val': 'fixed_train_val.csv',
        'id_test': 'fixed_train_test.csv',
    }
    splits: ClassVar[tuple[str, ...]] = tuple(split_files)
    classes: Sequence[str] | None = ('background', 'wheat_head')
    wilds_name = 'globalwheat'
    default_version = '1.1'

    def _index(self) -> None:
        """Read the split's table and parse its boxes."""
        table_path = os.path.join(self.data_dir, self.split_files[self.split])
        self._verify([self.split_files[self.split]])
        table = read_table(table_path, ['image_name', 'BoxesString'])
        parsed = [parse_boxes(text) for text in table['BoxesString']]
        problems = pd.Series([p for _, p in parsed], index=table.index, dtype=object)
        records = table_records(
            table_path,
            table,
            _image_paths(self.data_dir, table),
            boxes=pd.Series([b for b, _ in parsed], dtype=object),
        )
        self._set_records(records, problems)

    def _load_sample(self, index: int) -> Sample:
        """The image, its boxes and their labels; a box outside the image is invalid."""
        image = self._read_rgb(index)
        boxes: np.ndarray = self.records['boxes'].iat[index]
        height, width = image.shape[-2:]
        outside = (boxes[:, 2] > width) | (boxes[:, 3] > height)
        if outside.any():
            box = boxes[np.flatnonzero(outside)[0]].tolist()
            raise InvalidSampleError(
                f'Box {box} lies outside the {width} x {height} image '
                f'{self._where(index)}'
            )
        return {
            'image': image,
            'bbox_xyxy': torch.from_numpy(boxes.copy()),
            'label': torch.ones(len(boxes), dtype=torch.long),
        }


class GlobalWheatUnlabeled(WILDSUnlabeledDataset):
    """GlobalWheat images without boxes, for self-supervised pre-training.

    Reads the WILDS unlabeled release (``<root>/globalwheat_unlabeled_v1.0/``:
    ``official_<split>.csv`` with an ``image_name`` column and ``images/``; splits
    ``train_unlabeled``, ``val_unlabeled``, ``test_unlabeled``,
    ``extra_unlabeled``), or the images of a split of the labeled release,
    ignoring the boxes. The ExPLoRA paper pre-trains on the labeled training
    images (``split='train'``).

    Samples are ``{'image': float (3, H, W) 0-255}``.

    By default the ``'train_unlabeled'`` split is read; constructor arguments: see
    :class:`~explora_geo.datasets.wilds.WILDSImageDataset`.

    .. versionadded:: 0.1
    """

    wilds_name = 'globalwheat'
    unlabeled_splits: ClassVar[tuple[str, ...]] = (*UNLABELED_SPLITS, 'extra_unlabeled')
    splits: ClassVar[tuple[str, ...]] = (*unlabeled_splits, *GlobalWheat.splits)
    default_split = 'train_unlabeled'
    default_version = GlobalWheat.default_version

    def _index(self) -> None:
        """Read the image names of the split's table."""
        if self.from_unlabeled_release:
            filename = f'official_{self.split}.csv'
        else:
            filename = GlobalWheat.split_files[self.split]
        self._verify([filename])
        table_path = os.path.join(self.data_dir, filename)
        table = read_table(table_path, ['image_name'])
        records = table_records(table_path, table, _image_paths(self.data_dir, table))
        self._set_records(records)


def _image_paths(data_dir: str, table: pd.DataFrame) -> list[str]:
    """Build the image paths of a GlobalWheat table.

    Args:
        data_dir: The release folder.
        table: Rows with an ``image_name`` column.

    Returns:
        ``<data_dir>/images/<image_name>`` for each row.
    """
    return [os.path.join(data_dir, 'images', str(name)) for name in table['image_name']]
