"""SpaceNet 1 datamodule with the ExPLoRA paper's split and normalisation."""

from functools import partial
from typing import Any

import kornia.augmentation as K
from torchgeo.datamodules import SpaceNet1DataModule
from torchgeo.datasets.utils import Sample

from ..sensors import IMAGENET_RGB
from .contract import DataContract, device_normalize, device_stats
from .image_splits import resize_short_side

#: Images of the labeled SpaceNet 1 release held out for testing in the paper
#: (1,940 of 6,940; the other 5,000 are for training).
PAPER_TEST_FRACTION = 1940 / 6940

#: Shorter side of the SpaceNet 1 RGB chips (406 x 439 px).
CHIP_SHORT_SIDE = 406


def _image_only(resize: K.AugmentationSequential, sample: Sample) -> Sample:
    """Keep the image of *sample*, resized and cropped by *resize*.

    Args:
        resize: Per-sample transform of ``{'image': (C, H, W)}``.
        sample: A SpaceNet sample.

    Returns:
        ``{'image': ...}``.
    """
    out: Sample = resize({'image': sample['image']})
    return out


class SpaceNet1ImageNetDataModule(DataContract, SpaceNet1DataModule):
    """SpaceNet 1 building segmentation for ViTs initialised from natural images.

    Reuses torchgeo's :class:`~torchgeo.datamodules.SpaceNet1DataModule` (the
    RGB 406 x 439 px chips padded to 448 x 448, a multiple of both 14 and 16 px
    patches, and its augmentations) and changes two things to match the ExPLoRA
    paper: normalisation with the ImageNet statistics of the DinoV2 / MAE
    checkpoints, and the split sizes, 1,940 test images out of the 6,940
    labeled ones. torchgeo needs a validation split, so by default 10 % of the
    images are held out from the paper's 5,000 training images for validation.

    With ``unlabeled=True`` the training loader yields the images of the
    training split only (validation and test images stay unseen), for
    self-supervised pre-training: each chip's shorter side is resized to
    *image_size* and centre-cropped to a square, batches hold ``'image'`` only,
    scaled to [0, 1] (``'unit'``) and not augmented. There is no validation
    loader in that mode.

    .. versionadded:: 0.1
    """

    normalization = IMAGENET_RGB.normalization('standard')
    mean, std = normalization.affine()
    # Label order of the batches: torchgeo's datamodule pads masks with 0 and
    # shifts the dataset's labels by one.
    class_names = ('padding', 'background', 'building')

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_split_pct: float = 0.1,
        test_split_pct: float = PAPER_TEST_FRACTION,
        unlabeled: bool = False,
        image_size: int = CHIP_SHORT_SIDE,
        **kwargs: Any,
    ) -> None:
        """Initialize a new SpaceNet1ImageNetDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            val_split_pct: Fraction of the labeled images used for validation.
            test_split_pct: Fraction of the labeled images used for testing.
            unlabeled: If True, load training images only, for pre-training.
            image_size: Height and width of the images with ``unlabeled=True``
                (the default, the chips' shorter side, crops without
                resampling); labeled batches are padded to 448 x 448.
            **kwargs: Additional keyword arguments passed to
                :class:`~torchgeo.datasets.SpaceNet1` (``root``, ...).

        Raises:
            ValueError: If ``image`` is not ``'3band'`` (the ImageNet statistics
                are for RGB), or if ``transforms`` is given with
                ``unlabeled=True``.
        """
        image = kwargs.setdefault('image', '3band')
        if image != '3band':
            raise ValueError(
                f"image={image!r}: this datamodule normalises RGB ('3band') chips "
                'with ImageNet statistics; use torchgeo.datamodules.'
                'SpaceNet1DataModule for 8-band chips'
            )
        if unlabeled:
            if kwargs.get('transforms') is not None:
                raise ValueError(
                    'transforms= is not supported with unlabeled=True: the '
                    'pre-training objective crops and augments the images itself'
                )
            kwargs['transforms'] = partial(_image_only, resize_short_side(image_size))
        super().__init__(
            batch_size, num_workers, val_split_pct, test_split_pct, **kwargs
        )
        self.unlabeled = unlabeled
        self.image_size = image_size
        if unlabeled:
            self.normalization = IMAGENET_RGB.normalization('unit')
            self.mean, self.std = device_stats(self.normalization)
            self.train_aug = self.aug = K.AugmentationSequential(
                device_normalize(self.normalization), data_keys=None, keepdim=True
            )

    def setup(self, stage: str) -> None:
        """Set up datasets; with ``unlabeled=True`` only the training split.

        Args:
            stage: Either 'fit', 'validate', 'test', or 'predict'.
        """
        super().setup(stage)
        if self.unlabeled:
            self.val_dataset = None
            self.test_dataset = None
            self.predict_dataset = None
