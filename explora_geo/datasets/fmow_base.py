"""Behaviour shared by the fMoW datasets: records, bad-sample policy, sizing, plots."""

import abc
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypedDict

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset
from torchgeo.datasets.utils import Path, Sample
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as tvf

from .fmow_metadata import FMOW_CLASSES, FMoWSampleError

OnError = Literal['raise', 'skip']


def resize_and_center_crop(
    image: Tensor, size: int, boxes: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Resize the shorter side of an image to *size*, then crop its centre square.

    Bilinear with antialiasing keeps every output value inside the input's range
    (so images scaled to [0, 1] stay in [0, 1]).

    Args:
        image: ``(C, H, W)`` float tensor.
        size: output height and width.
        boxes: optional ``(N, 4)`` boxes in pixel ``x1, y1, x2, y2``; they follow the
            image and are clipped to the crop.

    Returns:
        the ``(C, size, size)`` image and the transformed boxes (or None).

    .. versionadded:: 0.1
    """
    out = tvf.resize(image, [size], antialias=True)
    out = tvf.center_crop(out, [size, size])
    if boxes is None:
        return out, None
    canvas = (image.shape[-2], image.shape[-1])
    bb = tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=canvas)
    bb = tvf.center_crop(tvf.resize(bb, [size], antialias=True), [size, size])
    bb = tvf.clamp_bounding_boxes(bb)
    return out, bb.as_subclass(Tensor)


def stretch(image: np.ndarray) -> np.ndarray:
    """Stretch each channel of an ``(H, W, C)`` image to [0, 1] for display.

    The 2nd and 98th percentiles of every channel map to 0 and 1, so raw counts,
    [0, 1] values and z-scores all render alike.

    Args:
        image: the image.

    Returns:
        the stretched image.

    .. versionadded:: 0.1
    """
    lo = np.percentile(image, 2, axis=(0, 1), keepdims=True)
    hi = np.percentile(image, 98, axis=(0, 1), keepdims=True)
    return np.clip((image - lo) / np.maximum(hi - lo, 1e-12), 0, 1)


class FMoWOptions(TypedDict, total=False):
    """Keyword arguments taken by every fMoW dataset (see :class:`FMoWBase`).

    .. versionadded:: 0.1
    """

    size: int | None
    transforms: Callable[[Sample], Sample] | None
    on_error: OnError


@dataclass
class SplitIndex:
    """The entries of a split, gathered while indexing it.

    One entry per accepted image in :attr:`files`, :attr:`labels`,
    :attr:`locations` and, where the index has them, :attr:`rows` (table rows) and
    :attr:`timestamps`; one message per rejected entry in :attr:`errors`.

    .. versionadded:: 0.1
    """

    files: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    timestamps: list[tuple[int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(
        self,
        file: str,
        label: int,
        location: str,
        row: int | None = None,
        timestamp: tuple[int, int, int] | None = None,
    ) -> None:
        """Add an accepted image.

        Args:
            file: its path.
            label: its class index.
            location: its location (images of one location are views of one site).
            row: the table row that lists it, if any.
            timestamp: its ``(year, month, hour)``, if known.
        """
        self.files.append(file)
        self.labels.append(label)
        self.locations.append(location)
        if row is not None:
            self.rows.append(row)
        if timestamp is not None:
            self.timestamps.append(timestamp)

    def row_array(self) -> np.ndarray:
        """The table rows as an int64 array.

        Returns:
            shape ``(N,)``.
        """
        return np.array(self.rows, dtype=np.int64)

    def timestamp_array(self) -> np.ndarray:
        """The timestamps as an int64 array.

        Returns:
            shape ``(N, 3)``.
        """
        return np.array(self.timestamps, dtype=np.int64).reshape(-1, 3)


class FMoWBase(NonGeoDataset, abc.ABC):
    """Base class of the fMoW datasets.

    A subclass fills :attr:`files`, :attr:`labels` and :attr:`locations` (one entry
    per image) and implements :meth:`_load_sample`. This class provides the length,
    the bad-sample policy, the transforms hook and plotting.

    Bad samples (a missing or unreadable file, a wrong band count, NaN or nodata
    pixels, invalid metadata) raise :class:`FMoWSampleError` naming the file and the
    problem. With ``on_error='skip'`` the sample is replaced by the next readable
    one and a warning names it together with the number skipped so far in this
    process; a skipped index is not read again.

    .. versionadded:: 0.1
    """

    classes: tuple[str, ...] = FMOW_CLASSES
    splits: tuple[str, ...] = ('train', 'val', 'test')
    #: Directory names tried in order for each split (the labelled fMoW test set
    #: is released as ``test_gt``).
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {
        'train': ('train',),
        'val': ('val',),
        'test': ('test_gt', 'test'),
    }
    #: How to obtain the data; attached to :class:`DatasetNotFoundError`.
    instructions: ClassVar[str] = ''

    files: np.ndarray
    labels: np.ndarray
    locations: np.ndarray

    def __init__(
        self,
        root: Path,
        split: str,
        size: int | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        on_error: OnError = 'raise',
    ) -> None:
        """Initialize the shared state.

        The keyword arguments *size*, *transforms* and *on_error* are those of
        every fMoW dataset (:class:`FMoWOptions`).

        Args:
            root: root directory of the dataset.
            split: one of ``'train'``, ``'val'``, ``'test'``.
            size: resize the shorter side to this many pixels and crop the centre
                square, so that samples collate; None keeps the native size.
            transforms: a function/transform that takes a sample and returns a
                transformed version.
            on_error: ``'raise'`` to stop at a bad entry (category, table row) or
                file, ``'skip'`` to drop it with a warning.

        Raises:
            ValueError: if *split*, *size* or *on_error* is invalid.
        """
        if split not in self.splits:
            raise ValueError(
                f'split={split!r} is invalid; expected one of {self.splits}'
            )
        if on_error not in ('raise', 'skip'):
            raise ValueError(
                f"on_error={on_error!r} is invalid; expected 'raise' or 'skip'"
            )
        if size is not None and size < 1:
            raise ValueError(f'size={size} is invalid; expected a positive int or None')
        self.root = root
        self.split = split
        self.size = size
        self.transforms = transforms
        self.on_error = on_error
        #: Index -> reason of every sample skipped in this process.
        self.skipped: dict[int, str] = {}

    def _not_found(self) -> DatasetNotFoundError:
        """Build the error raised when the data is not under :attr:`root`.

        Returns:
            the error, with :attr:`instructions` attached as a note.
        """
        err = DatasetNotFoundError(self)
        err.add_note(self.instructions)
        return err

    def _split_dir(self, parent: Path) -> str:
        """Find the image directory of :attr:`split` under *parent*.

        Args:
            parent: directory that holds the split directories.

        Returns:
            the first existing candidate of :attr:`split_dirs`.

        Raises:
            DatasetNotFoundError: if none exists.
        """
        for name in self.split_dirs[self.split]:
            path = os.path.join(parent, name)
            if os.path.isdir(path):
                return path
        raise self._not_found()

    def _reject(self, errors: list[str], total: int) -> None:
        """Apply the bad-sample policy to entries rejected while indexing.

        Args:
            errors: one message per rejected entry (file or CSV row).
            total: number of entries examined.

        Raises:
            FMoWSampleError: if *errors* is not empty and ``on_error='raise'``.
        """
        if not errors:
            return
        more = f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''
        if self.on_error == 'raise':
            raise FMoWSampleError(errors[0] + more)
        warnings.warn(
            f'{type(self).__name__}: skipped {len(errors)} of {total} entries; '
            f'first: {errors[0]}',
            stacklevel=3,
        )

    def _install(self, index: SplitIndex, total: int) -> None:
        """Apply the bad-sample policy to an index and keep its images.

        Args:
            index: the split's index.
            total: number of entries examined (files, folders or table rows).

        Raises:
            FMoWSampleError: if the index rejected an entry and ``on_error='raise'``.
        """
        self._reject(index.errors, total)
        # Fixed-width numpy arrays instead of lists of Python objects keep the
        # per-worker memory flat when a DataLoader forks.
        self.files = np.array(index.files, dtype=str)
        self.labels = np.array(index.labels, dtype=np.int64)
        self.locations = np.array(index.locations, dtype=str)

    def __len__(self) -> int:
        """Return the number of images.

        Returns:
            length of the dataset
        """
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        """Return the sample at *index*.

        Args:
            index: index to return.

        Returns:
            the sample (see the subclass for its keys).

        Raises:
            IndexError: if *index* is out of range (which also ends iteration
                over the dataset).
            FMoWSampleError: if the sample is bad and ``on_error='raise'``, or if no
                sample of the dataset can be read.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(
                f'index {index} is out of range for {type(self).__name__} of {n} samples'
            )
        sample = self._load_valid(index % n)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _load_valid(self, index: int) -> Sample:
        """Load *index*, or with ``on_error='skip'`` the next readable sample.

        Args:
            index: index to return.

        Returns:
            the sample.

        Raises:
            FMoWSampleError: see :meth:`__getitem__`.
        """
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if i in self.skipped:
                continue
            try:
                return self._load_sample(i)
            except FMoWSampleError as e:
                if self.on_error == 'raise':
                    raise
                self.skipped[i] = str(e)
                warnings.warn(
                    f'{type(self).__name__}: skipped sample {i}: {e} '
                    f'({len(self.skipped)} skipped so far in this process)',
                    stacklevel=3,
                )
        raise FMoWSampleError(
            f'{type(self).__name__}(root={self.root!r}, split={self.split!r}): none of '
            f'the {n} samples could be read; {len(self.skipped)} were skipped'
        )

    @abc.abstractmethod
    def _load_sample(self, index: int) -> Sample:
        """Load one sample without the bad-sample policy.

        Args:
            index: index to return.

        Returns:
            the sample.

        Raises:
            FMoWSampleError: if the sample is bad.
        """

    def _resize(
        self, image: Tensor, boxes: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Apply :attr:`size` to an image (and boxes) when it is set.

        Args:
            image: ``(C, H, W)`` float tensor.
            boxes: optional ``(N, 4)`` pixel boxes.

        Returns:
            the image and boxes.
        """
        if self.size is None:
            return image, boxes
        return resize_and_center_crop(image, self.size, boxes)

    @abc.abstractmethod
    def _rgb(self, image: Tensor) -> np.ndarray:
        """Select the red, green and blue channels of an image for display.

        Args:
            image: ``(C, H, W)`` image of a sample.

        Returns:
            ``(H, W, 3)`` array.

        Raises:
            RGBBandsMissingError: if the image lacks one of them.
        """

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample from the dataset.

        A temporal sample (image of shape ``(T, C, H, W)``) is drawn as ``T`` panels;
        the box of a sample with ``bbox_xyxy`` is outlined.

        Args:
            sample: a sample returned by :meth:`__getitem__`, optionally with a
                ``prediction`` key.
            show_titles: flag indicating whether to show titles above each panel.
            suptitle: optional string to use as a suptitle.

        Returns:
            a matplotlib Figure with the rendered sample.

        Raises:
            RGBBandsMissingError: if the red, green or blue band is not loaded.
        """
        image = sample['image']
        frames = [image] if image.ndim == 3 else list(image)
        panels = [stretch(self._rgb(frame)) for frame in frames]
        stamps = sample.get('timestamps')
        fig, axs = plt.subplots(
            1, len(panels), figsize=(4 * len(panels), 4), squeeze=False
        )
        for t, (ax, panel) in enumerate(zip(axs[0], panels, strict=True)):
            ax.imshow(panel)
            ax.axis('off')
            if image.ndim == 3 and 'bbox_xyxy' in sample:
                for x1, y1, x2, y2 in sample['bbox_xyxy'].tolist():
                    box = Rectangle(
                        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor='yellow'
                    )
                    ax.add_patch(box)
            if show_titles and stamps is not None:
                year, month, hour = (int(v) for v in stamps[t])
                ax.set_title(f'{year}-{month:02d} {hour:02d}h', fontsize='small')
        if show_titles and 'label' in sample:
            title = f'Label: {self.classes[int(sample["label"])]}'
            if 'prediction' in sample:
                title += f'\nPrediction: {self.classes[int(sample["prediction"])]}'
            if len(panels) == 1:
                axs[0, 0].set_title(title)
            else:
                fig.text(0.5, 0.01, title, ha='center')
        if suptitle is not None:
            plt.suptitle(suptitle)
        return fig
