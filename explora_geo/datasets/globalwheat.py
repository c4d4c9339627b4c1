"""GlobalWheat-WILDS wheat-head detection."""

import math
import os
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torchgeo.datasets.utils import Path, Sample

from .image_table import InvalidSampleError, OnError, read_table, table_records
from .plot import plot_detection
from .wilds import WILDSImageDataset, WILDSUnlabeledDataset

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
    classes: ClassVar[tuple[str, ...]] = ('background', 'wheat_head')

    def __init__(
        self,
        root: Path = 'data',
        split: Literal['train', 'val', 'test', 'id_val', 'id_test'] = 'train',
        version: str = '1.1',
        transforms: Callable[[Sample], Sample] | None = None,
        download: bool = False,
        on_error: OnError = 'raise',
    ) -> None:
        """Initialize a new GlobalWheat instance.

        Args:
            root: Root directory holding ``globalwheat_v<version>``.
            split: One of ``'train'``, ``'val'``, ``'test'``, ``'id_val'``,
                ``'id_test'``.
            version: Release version.
            transforms: A function/transform that takes an input sample
                and returns a transformed version.
            download: If True, download the release with the ``wilds`` package
                when it is missing.
            on_error: ``'raise'`` to stop at the first bad sample (missing or
                corrupt image, malformed boxes, boxes outside the image) with an
                error naming it; ``'skip'`` to leave bad samples out and count
                them in a warning.

        Raises:
            ValueError: If *split* is invalid or the table lacks a column.
            DatasetNotFoundError: If the release is not found and *download* is
                False.
            InvalidSampleError: If a row's boxes are malformed and *on_error* is
                ``'raise'``.
        """
        super().__init__(
            root, 'globalwheat', version, split, transforms, download, on_error
        )
        self._verify([self.split_files[split]])

        table_path = os.path.join(self.data_dir, self.split_files[split])
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

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample from the dataset.

        Args:
            sample: A sample returned by :meth:`__getitem__`, optionally with
                ``'prediction_bbox_xyxy'``.
            show_titles: Flag indicating whether to show titles above each panel.
            suptitle: Optional string to use as a suptitle.

        Returns:
            A matplotlib Figure with the rendered sample.

        Raises:
            RGBBandsMissingError: If the image is not a three-channel RGB image.
        """
        return plot_detection(sample, show_titles, suptitle)


class GlobalWheatUnlabeled(WILDSUnlabeledDataset):
    """GlobalWheat images without boxes, for self-supervised pre-training.

    Reads the WILDS unlabeled release (``<root>/globalwheat_unlabeled_v1.0/``:
    ``official_<split>.csv`` with an ``image_name`` column and ``images/``; splits
    ``train_unlabeled``, ``val_unlabeled``, ``test_unlabeled``,
    ``extra_unlabeled``), or the images of a split of the labeled release,
    ignoring the boxes. The ExPLoRA paper pre-trains on the labeled training
    images (``split='train'``).

    Samples are ``{'image': float (3, H, W) 0-255}``.

    .. versionadded:: 0.1
    """

    unlabeled_splits: ClassVar[tuple[str, ...]] = (
        'train_unlabeled',
        'val_unlabeled',
        'test_unlabeled',
        'extra_unlabeled',
    )
    splits: ClassVar[tuple[str, ...]] = (*unlabeled_splits, *GlobalWheat.splits)

    def __init__(
        self,
        root: Path = 'data',
        split: str = 'train_unlabeled',
        version: str | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        download: bool = False,
        on_error: OnError = 'raise',
    ) -> None:
        """Initialize a new GlobalWheatUnlabeled instance.

        Args:
            root: Root directory holding the release folders.
            split: An unlabeled split or a split of the labeled release.
            version: Release version; defaults to ``'1.0'`` for the unlabeled
                release and ``'1.1'`` for the labeled one.
            transforms: A function/transform that takes an input sample
                and returns a transformed version.
            download: If True, download the release with the ``wilds`` package
                when it is missing.
            on_error: ``'raise'`` or ``'skip'`` missing and corrupt images.

        Raises:
            ValueError: If *split* is invalid or the table lacks a column.
            DatasetNotFoundError: If the release is not found and *download* is
                False.
        """
        unlabeled = split in self.unlabeled_splits
        release = 'globalwheat_unlabeled' if unlabeled else 'globalwheat'
        version = version or ('1.0' if unlabeled else '1.1')
        super().__init__(root, release, version, split, transforms, download, on_error)
        filename = (
            f'official_{split}.csv' if unlabeled else GlobalWheat.split_files[split]
        )
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
