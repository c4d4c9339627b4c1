"""Base datamodule over the named splits of an image dataset, with an unlabeled mode.

The WILDS and NAIP land-cover datamodules share one shape: a labeled dataset
class whose constructor takes ``split=``, an unlabeled twin for self-supervised
pre-training, images of varying size that are resized per sample (so that they
can be batched), and augmentation plus normalisation applied on the device.
"""

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import kornia.augmentation as K
from torch.utils.data import Dataset
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets import NonGeoDataset
from torchgeo.datasets.utils import Sample

from ..sensors import IMAGENET_RGB, Normalization
from .contract import DataContract, device_normalize, device_stats


def compose_transforms(
    first: Callable[[Sample], Sample], then: Callable[[Sample], Sample], sample: Sample
) -> Sample:
    """Apply two sample transforms in order.

    Bound with :func:`functools.partial`, it stays picklable for worker processes.

    Args:
        first: Transform applied first.
        then: Transform applied second.
        sample: The sample.

    Returns:
        The transformed sample.

    .. versionadded:: 0.1
    """
    return then(first(sample))


def chain_transforms(
    first: Callable[[Sample], Sample] | None, then: Callable[[Sample], Sample] | None
) -> Callable[[Sample], Sample] | None:
    """Chain two optional sample transforms, *first* running first.

    Args:
        first: Transform applied first, or None.
        then: Transform applied second (e.g. a user's ``transforms``), or None.

    Returns:
        A picklable transform applying both, the one given, or None.

    .. versionadded:: 0.1
    """
    if first is None or then is None:
        return first or then
    return partial(compose_transforms, first, then)


def train_augmentation(
    normalization: Normalization | None,
    image_size: int | None = None,
    crop_scale: tuple[float, float] | None = None,
    vertical_flip: bool = False,
) -> K.AugmentationSequential:
    """Device augmentation of training batches: normalise, crop, flip.

    Args:
        normalization: Normalisation applied first, or None when the dataset
            already delivers model input.
        image_size: Output size of the random resized crop.
        crop_scale: Area range of the random resized crop, or None for no crop.
        vertical_flip: If True, also flip vertically (boxes and masks alike).

    Returns:
        The augmentation of ``(B, C, H, W)`` batches (with ``data_keys=None``,
        so a batch's boxes and masks follow its images).

    .. versionadded:: 0.1
    """
    ops: list[K.AugmentationBase2D] = []
    if normalization is not None:
        ops.append(device_normalize(normalization))
    if crop_scale is not None:
        if image_size is None:
            raise ValueError('a random resized crop (crop_scale) needs image_size')
        ops.append(K.RandomResizedCrop((image_size, image_size), scale=crop_scale))
    ops.append(K.RandomHorizontalFlip())
    if vertical_flip:
        ops.append(K.RandomVerticalFlip())
    return K.AugmentationSequential(*ops, data_keys=None, keepdim=True)


def resize_short_side(size: int) -> K.AugmentationSequential:
    """Per-sample transform: resize the shorter side to *size*, then centre-crop.

    This is the ExPLoRA paper's preprocessing of images of varying size (shorter
    side resized keeping the aspect ratio, then a centre crop to a square).

    Args:
        size: Output height and width.

    Returns:
        A transform of samples with an ``'image'`` of shape (C, H, W).

    .. versionadded:: 0.1
    """
    return K.AugmentationSequential(
        K.Resize(size, side='short', antialias=True),
        K.CenterCrop(size),
        data_keys=None,
        keepdim=True,
    )


class ImageSplitsDataModule(DataContract, NonGeoDataModule):
    """Datamodule over named splits of an image dataset, with an unlabeled mode.

    In the labeled mode, *train_split*, *val_split* and *test_split* of
    :attr:`labeled_class` feed the training, validation and test loaders. With
    ``unlabeled=True``, the training loader reads *pretrain_split* of
    :attr:`unlabeled_class` (images only) and the validation loader
    *pretrain_val_split* if given; images are then only scaled to [0, 1]
    (``'unit'``), leaving crops, colour augmentation and normalisation to the
    self-supervised objective.

    Subclasses set :attr:`labeled_class` and :attr:`unlabeled_class`, and set
    :attr:`sample_transform` (applied per sample, on the CPU, so that samples can
    be batched) and :attr:`train_aug`. A subclass that changes a default declares
    only that argument and passes the others on with ``**kwargs``.

    .. versionadded:: 0.1
    """

    #: Labeled dataset class, constructed with ``split=``.
    labeled_class: ClassVar[type[NonGeoDataset]]
    #: Unlabeled dataset class, constructed with ``split=``.
    unlabeled_class: ClassVar[type[NonGeoDataset]]

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 224,
        unlabeled: bool = False,
        train_split: str = 'train',
        val_split: str = 'val',
        test_split: str = 'test',
        pretrain_split: str = 'train',
        pretrain_val_split: str | None = None,
        normalization: Normalization | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize a new image-splits datamodule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: Height and width of the images fed to the model.
            unlabeled: If True, load images only, for pre-training.
            train_split: Labeled split used for training.
            val_split: Labeled split used for validation (e.g. ``'val'``, out of
                distribution, or ``'id_val'``).
            test_split: Labeled split used for testing.
            pretrain_split: Split of :attr:`unlabeled_class` read with
                ``unlabeled=True``.
            pretrain_val_split: Split of :attr:`unlabeled_class` used for
                validation with ``unlabeled=True``, or None for no validation
                loader.
            normalization: Normalisation of the labeled mode, applied on the
                device (default: ImageNet statistics,
                :data:`~explora_geo.sensors.IMAGENET_RGB`); the unlabeled mode
                divides by its ``scale`` only.
            **kwargs: Additional keyword arguments passed to the dataset classes
                (``root``, ``on_error``, ``download``, ...).
        """
        norm = normalization or IMAGENET_RGB.normalization('standard')
        if unlabeled:
            norm = Normalization('unit', norm.bands, scale=norm.scale)
        self.normalization = norm
        # torchgeo's default device augmentation normalises with these.
        self.mean, self.std = device_stats(norm)
        super().__init__(self.labeled_class, batch_size, num_workers, **kwargs)
        self.image_size = image_size
        self.unlabeled = unlabeled
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.pretrain_split = pretrain_split
        self.pretrain_val_split = pretrain_val_split
        self.sample_transform: Callable[[Sample], Sample] | None = None

    def _dataset_kwargs(self) -> dict[str, Any]:
        """Return the dataset keyword arguments, with the per-sample transform.

        Returns:
            The keyword arguments; a user's ``transforms`` runs after
            :attr:`sample_transform`.
        """
        kwargs = dict(self.kwargs)
        user = kwargs.pop('transforms', None)
        kwargs['transforms'] = chain_transforms(self.sample_transform, user)
        return kwargs

    def prepare_data(self) -> None:
        """Download the data that :meth:`setup` will read, if ``download=True``."""
        if self.kwargs.get('download', False):
            if self.unlabeled:
                self.unlabeled_class(split=self.pretrain_split, **self.kwargs)  # type: ignore[call-arg]
            else:
                self.labeled_class(split=self.train_split, **self.kwargs)  # type: ignore[call-arg]

    def setup(self, stage: str) -> None:
        """Set up datasets.

        Args:
            stage: Either 'fit', 'validate', 'test', or 'predict'.
        """
        kwargs = self._dataset_kwargs()
        fit, val = ('fit',), ('fit', 'validate')
        plan: list[tuple[str, type[Dataset[Sample]], str | None, tuple[str, ...]]]
        if self.unlabeled:
            plan = [
                ('train', self.unlabeled_class, self.pretrain_split, fit),
                ('val', self.unlabeled_class, self.pretrain_val_split, val),
            ]
        else:
            plan = [
                ('train', self.labeled_class, self.train_split, fit),
                ('val', self.labeled_class, self.val_split, val),
                ('test', self.labeled_class, self.test_split, ('test',)),
            ]
        for name, dataset_class, split, stages in plan:
            if stage in stages and split is not None:
                dataset = dataset_class(split=split, **kwargs)  # type: ignore[call-arg]
                setattr(self, f'{name}_dataset', dataset)


class ImageClassificationSplitsDataModule(ImageSplitsDataModule):
    """Image classification over named splits, as fine-tuned in the ExPLoRA paper.

    Each sample is resized to *image_size* (shorter side, then centre crop);
    training batches get a random resized crop (when *crop_scale* is given) and
    random flips on the device, after normalisation.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] | None = (0.08, 1.0),
        vertical_flip: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initialize a new image-classification splits datamodule instance.

        Args:
            crop_scale: Area range of the random resized crop of training
                images, or None for no crop.
            vertical_flip: If True, also flip training images vertically.
            **kwargs: Arguments of :class:`ImageSplitsDataModule`
                (*batch_size*, *num_workers*, *image_size*, *unlabeled*, the
                splits, ...) and of the dataset classes (``root``, ...).
        """
        super().__init__(**kwargs)
        self.sample_transform = resize_short_side(self.image_size)
        if not self.unlabeled:
            self.train_aug = train_augmentation(
                self.normalization, self.image_size, crop_scale, vertical_flip
            )
