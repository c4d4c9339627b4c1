"""fMoW-RGB, fMoW-Sentinel and fMoW temporal datamodules."""

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import kornia.augmentation as K
from torch.utils.data import default_collate
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets.utils import Sample

from ..datasets.fmow import FMoW, FMoWTemporal
from ..datasets.fmow_metadata import FMOW_CLASSES
from ..datasets.fmow_sentinel import FMoWSentinel
from ..sensors import FMOW_RGB, SENTINEL2, Normalization
from .contract import DataContract, device_normalize, device_stats


def collate_keys(samples: list[Sample], keys: Sequence[str]) -> Sample:
    """Collate only some keys of the samples (e.g. the image for pre-training).

    Args:
        samples: samples of one batch.
        keys: the keys to keep.

    Returns:
        the batch.

    .. versionadded:: 0.1
    """
    return default_collate([{k: s[k] for k in keys} for s in samples])


class _FMoWDataModule(DataContract, NonGeoDataModule):
    """Shared set-up of the fMoW datamodules.

    The dataset resizes the shorter side of each image to ``image_size / crop_pct``
    and crops the centre square (SatMAE's evaluation resize, e.g. 256 px for 224 px
    inputs). On the device, training batches get a random resized crop to
    ``image_size`` (scale 0.2-1, bicubic) and a horizontal flip; validation and test
    batches the central ``image_size`` crop. Then the channels are normalised
    (:attr:`normalization`, chosen by :meth:`_normalization`).

    With ``unlabeled=True`` training batches are only normalised: the
    self-supervised objective crops and flips them itself.

    A subclass sets :attr:`fmow_class`; one that changes a default or adds an
    argument declares only that and passes the others on with ``**kwargs``.
    """

    class_names = FMOW_CLASSES

    #: The dataset class.
    fmow_class: ClassVar[type[FMoW | FMoWSentinel | FMoWTemporal]] = FMoW
    #: Keys of a batch in unlabeled mode.
    unlabeled_keys: tuple[str, ...] = ('image',)

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 224,
        crop_pct: float = 0.875,
        unlabeled: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initialize a new fMoW datamodule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: side of the images fed to the model.
            crop_pct: the dataset resizes images to ``image_size / crop_pct`` before
                the (random or central) crop.
            unlabeled: keep only the image (and, temporal, its timestamps) in
                batches, for pre-training.
            **kwargs: Additional keyword arguments passed to the dataset class
                (:class:`~explora_geo.datasets.FMoW`,
                :class:`~explora_geo.datasets.FMoWSentinel` or
                :class:`~explora_geo.datasets.FMoWTemporal`).

        Raises:
            ValueError: if *size* is passed, *image_size*/*crop_pct* are invalid,
                or a dataset argument is.
        """
        if 'size' in kwargs:
            raise ValueError(
                'size is set by the datamodule from image_size / crop_pct; pass those'
            )
        if image_size < 1 or not 0 < crop_pct <= 1:
            raise ValueError(
                f'image_size={image_size}, crop_pct={crop_pct} are invalid; expected '
                'image_size >= 1 and 0 < crop_pct <= 1'
            )
        norm = self._normalization(unlabeled, kwargs)
        self.normalization = norm
        self.mean, self.std = device_stats(norm)
        kwargs['size'] = int(image_size / crop_pct)
        super().__init__(self.fmow_class, batch_size, num_workers, **kwargs)
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.unlabeled = unlabeled
        if unlabeled:
            self.train_aug = self._augmentations()
        else:
            self.train_aug = self._augmentations(
                K.RandomResizedCrop(
                    (image_size, image_size), scale=(0.2, 1.0), resample='BICUBIC'
                ),
                K.RandomHorizontalFlip(),
            )
        self.aug = self._augmentations(K.CenterCrop(image_size))
        if unlabeled:
            self.collate_fn = partial(collate_keys, keys=self.unlabeled_keys)

    def _normalization(self, unlabeled: bool, kwargs: dict[str, Any]) -> Normalization:
        """Choose the normalisation batches carry, configuring the dataset for it.

        Args:
            unlabeled: whether batches are for pre-training.
            kwargs: the dataset keyword arguments, which may be updated.

        Returns:
            fMoW-RGB's: ``'unit'`` when unlabeled, else ``'standard'``.
        """
        return FMOW_RGB.normalization('unit' if unlabeled else 'standard')

    def _augmentations(self, *ops: K.AugmentationBase2D) -> K.AugmentationSequential:
        """Chain spatial operations and the normalisation for ``(B, C, H, W)`` batches.

        Args:
            ops: the spatial operations.

        Returns:
            the augmentation applied to batches on the device.
        """
        return K.AugmentationSequential(
            *ops,
            device_normalize(self.normalization),
            data_keys=None,
            keepdim=True,
        )


class FMoWDataModule(_FMoWDataModule):
    """LightningDataModule for the fMoW-RGB dataset.

    Images are 224 px by default (the paper's resolution) and normalised with the
    fMoW-RGB statistics (:data:`~explora_geo.sensors.FMOW_RGB`, ``'standard'``).
    ``unlabeled=True`` gives batches with the image only, scaled to [0, 1]
    (``'unit'``) and not augmented, for self-supervised pre-training.

    Arguments: see :class:`_FMoWDataModule`; other keyword arguments go to
    :class:`~explora_geo.datasets.FMoW`.

    .. versionadded:: 0.1
    """


class FMoWSentinelDataModule(_FMoWDataModule):
    """LightningDataModule for the fMoW-Sentinel dataset.

    Images are 96 px by default (the paper's resolution) with the 10 SatMAE bands.
    ``normalization='satmae'`` (default) scales every band in the dataset with
    SatMAE's ``clip((x - (mean - 2 std)) / (4 std), 0, 1)`` and applies no further
    normalisation; ``'zscore'`` loads raw values and standardises them with the
    per-band mean and std on the device (statistics of
    :data:`~explora_geo.sensors.SENTINEL2`). ``unlabeled=True`` gives batches with
    the image only, not augmented, for self-supervised pre-training.

    .. versionadded:: 0.1
    """

    fmow_class = FMoWSentinel

    def __init__(
        self,
        image_size: int = 96,
        normalization: Literal['satmae', 'zscore'] = 'satmae',
        **kwargs: Any,
    ) -> None:
        """Initialize a new FMoWSentinelDataModule instance.

        Args:
            image_size: side of the images fed to the model.
            normalization: ``'satmae'`` or ``'zscore'``.
            **kwargs: Arguments of :class:`_FMoWDataModule` (*batch_size*,
                *num_workers*, *crop_pct*, *unlabeled*) and of
                :class:`~explora_geo.datasets.FMoWSentinel`.

        Raises:
            ValueError: if an argument is invalid.
        """
        self._scaling = normalization
        super().__init__(image_size=image_size, **kwargs)

    def _normalization(self, unlabeled: bool, kwargs: dict[str, Any]) -> Normalization:
        """The Sentinel-2 normalisation of *normalization* (see :meth:`__init__`).

        Args:
            unlabeled: whether batches are for pre-training (no effect).
            kwargs: the dataset keyword arguments; ``normalization`` is set in them.

        Returns:
            The normalisation batches carry.
        """
        return _sentinel_normalization(self._scaling, kwargs)


def _sentinel_normalization(
    normalization: str, kwargs: dict[str, Any]
) -> Normalization:
    """Configure the Sentinel-2 normalisation of a datamodule.

    Args:
        normalization: ``'satmae'`` (applied by the dataset) or ``'zscore'``
            (raw values from the dataset, standardised on the device).
        kwargs: dataset keyword arguments; ``normalization`` is set in them.

    Returns:
        The normalisation batches carry.

    Raises:
        ValueError: if *normalization* is invalid.
    """
    bands = kwargs.get('bands') or FMoWSentinel.default_bands
    if normalization == 'satmae':
        kwargs['normalization'] = 'satmae'
        return SENTINEL2.normalization('satmae', bands)
    if normalization == 'zscore':
        kwargs['normalization'] = 'none'
        return SENTINEL2.normalization('standard', bands)
    raise ValueError(
        f"normalization={normalization!r} is invalid; expected 'satmae' or 'zscore'"
    )


class FMoWTemporalDataModule(_FMoWDataModule):
    """LightningDataModule for the fMoW temporal dataset (RGB or Sentinel-2).

    Batches hold images of shape ``(B, T, C, H, W)`` and ``timestamps`` of shape
    ``(B, T, 3)``. The same random crop and flip are applied to all ``T`` images of
    a sample. Defaults follow the paper: 224 px for ``sensor='rgb'`` and 96 px for
    ``sensor='sentinel'``, with the normalisation of :class:`FMoWDataModule` or
    :class:`FMoWSentinelDataModule` (RGB in unlabelled mode: ``'unit'``).
    ``unlabeled=True`` keeps the images and their timestamps, for temporal
    pre-training.

    .. versionadded:: 0.1
    """

    fmow_class = FMoWTemporal
    unlabeled_keys = ('image', 'timestamps')

    def __init__(
        self,
        sensor: Literal['rgb', 'sentinel'] = 'rgb',
        image_size: int | None = None,
        normalization: Literal['satmae', 'zscore'] = 'satmae',
        **kwargs: Any,
    ) -> None:
        """Initialize a new FMoWTemporalDataModule instance.

        Args:
            sensor: ``'rgb'`` or ``'sentinel'``.
            image_size: side of the images fed to the model; default 224 (RGB) or
                96 (Sentinel-2).
            normalization: Sentinel-2 only, ``'satmae'`` or ``'zscore'``.
            **kwargs: Arguments of :class:`_FMoWDataModule` (*batch_size*,
                *num_workers*, *crop_pct*, *unlabeled*) and of
                :class:`~explora_geo.datasets.FMoWTemporal`.

        Raises:
            ValueError: if an argument is invalid.
        """
        self._sensor = sensor
        self._scaling = normalization
        if image_size is None:
            image_size = 96 if sensor == 'sentinel' else 224
        super().__init__(image_size=image_size, **kwargs)

    def _normalization(self, unlabeled: bool, kwargs: dict[str, Any]) -> Normalization:
        """The normalisation of :class:`FMoWDataModule` or :class:`FMoWSentinelDataModule`.

        Args:
            unlabeled: whether batches are for pre-training.
            kwargs: the dataset keyword arguments; ``sensor`` (and, for
                Sentinel-2, ``normalization``) are set in them.

        Returns:
            The normalisation batches carry.
        """
        kwargs['sensor'] = self._sensor
        if self._sensor == 'sentinel':
            return _sentinel_normalization(self._scaling, kwargs)
        return super()._normalization(unlabeled, kwargs)

    def _augmentations(self, *ops: K.AugmentationBase2D) -> K.AugmentationSequential:
        """Chain operations applied alike to every image of a ``(B, T, C, H, W)`` batch.

        Args:
            ops: the spatial operations.

        Returns:
            the augmentation applied to batches on the device.
        """
        frames = K.VideoSequential(
            *ops,
            device_normalize(self.normalization),
            data_format='BTCHW',
            same_on_frame=True,
        )
        return K.AugmentationSequential(frames, data_keys=None, keepdim=True)
