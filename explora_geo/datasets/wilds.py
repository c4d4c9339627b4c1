"""Base class for datasets stored in the on-disk layout of the WILDS benchmark.

`WILDS <https://wilds.stanford.edu>`__ releases each dataset as a folder
``<root>/<name>_v<version>/`` holding CSV metadata and the images. The datasets
of this package read that layout directly, without the ``wilds`` package; the
package (optional extra ``explora-geo[wilds]``) is only used to download a
release when ``download=True``.
"""

import abc
import os
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchgeo.datasets import DatasetNotFoundError
from torchgeo.datasets.errors import DependencyNotFoundError
from torchgeo.datasets.utils import Path, Sample

from .image_table import ImageTableDataset, InvalidSampleError, OnError

#: The splits of the unlabeled WILDS releases, by domain: training domains, and the
#: domains of the out-of-distribution validation and test splits.
UNLABELED_SPLITS = ('train_unlabeled', 'val_unlabeled', 'test_unlabeled')


class WILDSImageDataset(ImageTableDataset):
    """Abstract base class for image datasets in a WILDS release folder.

    A subclass names its WILDS dataset (:attr:`wilds_name`), its splits and the
    default versions of its releases, and implements :meth:`_index`, which reads
    the split's table(s). Splits listed in :attr:`unlabeled_splits` are read
    from the unlabeled release ``<wilds_name>_unlabeled``, the others from the
    labeled release ``<wilds_name>``.

    .. versionadded:: 0.1
    """

    #: Where the releases are described and can be downloaded by hand.
    url = 'https://wilds.stanford.edu/datasets/'

    #: Name of the WILDS dataset, e.g. ``'iwildcam'``: the labeled release.
    wilds_name: ClassVar[str]
    #: The splits a dataset reads.
    splits: ClassVar[tuple[str, ...]]
    #: The splits read from the unlabeled release ``<wilds_name>_unlabeled``.
    unlabeled_splits: ClassVar[tuple[str, ...]] = ()
    #: The split read when *split* is None.
    default_split: ClassVar[str] = 'train'
    #: Version of the labeled release read when *version* is None.
    default_version: ClassVar[str]
    #: Version of the unlabeled release read when *version* is None.
    default_unlabeled_version: ClassVar[str] = '1.0'

    def __init__(
        self,
        root: Path = 'data',
        split: str | None = None,
        version: str | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        download: bool = False,
        on_error: OnError = 'raise',
    ) -> None:
        """Initialize a new WILDS dataset instance.

        Args:
            root: Root directory holding the release folders,
                ``<root>/<release>_v<version>``.
            split: The split to read, one of the class's :attr:`splits`; None for
                its :attr:`default_split`.
            version: Version of the release, e.g. ``'2.0'``; None for the class's
                :attr:`default_version` (labeled release) or
                :attr:`default_unlabeled_version` (unlabeled release).
            transforms: A function/transform that takes an input sample
                and returns a transformed version.
            download: If True, download the release with the ``wilds`` package
                when it is not found under *root*.
            on_error: ``'raise'`` to stop at the first bad sample (missing or
                corrupt image, invalid label or boxes) with an error naming it;
                ``'skip'`` to leave bad samples out and count them in a warning
                (see :class:`~explora_geo.datasets.image_table.ImageTableDataset`).

        Raises:
            ValueError: If *split* is not one of :attr:`splits`, or a table lacks
                a required column or has an invalid class list.
            DatasetNotFoundError: If the release is not found and *download* is
                False.
            InvalidSampleError: If a row's target is invalid and *on_error* is
                ``'raise'``.
        """
        split = self.default_split if split is None else split
        if split not in self.splits:
            raise ValueError(f'split must be one of {self.splits}, got {split!r}')
        super().__init__(transforms=transforms, on_error=on_error)
        unlabeled = split in self.unlabeled_splits
        self.split = split
        self.root = root
        #: The release read: ``<wilds_name>`` or ``<wilds_name>_unlabeled``.
        self.release = f'{self.wilds_name}_unlabeled' if unlabeled else self.wilds_name
        if version is None:
            version = (
                self.default_unlabeled_version if unlabeled else self.default_version
            )
        self.version = version
        self.download = download
        self._index()

    @property
    def from_unlabeled_release(self) -> bool:
        """Whether :attr:`split` is read from the unlabeled release.

        Returns:
            True for a split of :attr:`unlabeled_splits`.
        """
        return self.split in self.unlabeled_splits

    @abc.abstractmethod
    def _index(self) -> None:
        """Check that the split's files are present and install its records.

        Implementations call :meth:`_verify` with the files they read, then
        :meth:`_set_records`.
        """

    @property
    def data_dir(self) -> str:
        """The release folder, ``<root>/<release>_v<version>``.

        Returns:
            Path of the folder.
        """
        return os.path.join(self.root, f'{self.release}_v{self.version}')

    def _verify(self, files: Sequence[str]) -> None:
        """Check that the release is present, downloading it if allowed.

        Args:
            files: Files that must exist in the release folder.

        Raises:
            DatasetNotFoundError: If a file is missing and cannot be downloaded
                (the message names it and says how to get the release).
            DependencyNotFoundError: If *download* is True but the ``wilds`` package
                is not installed.
        """
        if self._missing(files) and self.download:
            self._download()
        missing = self._missing(files)
        if missing:
            error = DatasetNotFoundError(self)
            error.args = (
                f"{error.args[0]} Expected '{os.path.join(self.data_dir, missing[0])}'"
                f' from the WILDS {self.release} v{self.version} release: download it'
                f" from {self.url} and extract it under root, or install 'wilds'"
                " (pip install 'explora-geo[wilds]') and pass download=True.",
            )
            raise error

    def _missing(self, files: Sequence[str]) -> list[str]:
        """List the files that are missing from the release folder.

        Args:
            files: File names relative to the release folder.

        Returns:
            The missing ones.
        """
        return [f for f in files if not os.path.exists(os.path.join(self.data_dir, f))]

    def _download(self) -> None:
        """Download and extract the release with the ``wilds`` package.

        Raises:
            DependencyNotFoundError: If ``wilds`` is not installed.
        """
        try:
            import wilds
        except ModuleNotFoundError:
            raise DependencyNotFoundError(
                'wilds is not installed and is required to download WILDS data: '
                "pip install 'explora-geo[wilds]'"
            ) from None
        unlabeled = self.release.endswith('_unlabeled')
        wilds.get_dataset(
            dataset=self.release.removesuffix('_unlabeled'),
            version=self.version,
            unlabeled=unlabeled,
            root_dir=os.fspath(self.root),
            download=True,
        )

    def _read_rgb(self, index: int) -> Tensor:
        """Read the image of a sample as a float RGB tensor.

        Args:
            index: Index of the sample.

        Returns:
            The image, shape (3, H, W), values 0-255.

        Raises:
            FileNotFoundError: If the image file is missing.
            InvalidSampleError: If the image cannot be decoded.
        """
        path = self._check_exists(index)
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert('RGB'))
        except (OSError, SyntaxError, ValueError) as e:
            raise InvalidSampleError(
                f'Cannot decode image {self._where(index)}: {e}'
            ) from e
        return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32))


class WILDSClassificationDataset(WILDSImageDataset):
    """A labelled WILDS image-classification split: image and class index.

    .. versionadded:: 0.1
    """

    classes: Sequence[str]

    def _load_sample(self, index: int) -> Sample:
        """The image and its label (see :meth:`ImageTableDataset._load_sample`)."""
        image = self._read_rgb(index)
        label = torch.tensor(self.records['label'].iat[index], dtype=torch.long)
        return {'image': image, 'label': label}


class WILDSUnlabeledDataset(WILDSImageDataset):
    """WILDS images without labels, for self-supervised pre-training.

    .. versionadded:: 0.1
    """

    def _load_sample(self, index: int) -> Sample:
        """The image (see :meth:`ImageTableDataset._load_sample`)."""
        return {'image': self._read_rgb(index)}
