"""SpaceNet 1 datamodule with the ExPLoRA paper's split and normalisation."""

from typing import Any

from torchgeo.datamodules import SpaceNet1DataModule

from ..sensors import IMAGENET_RGB
from .contract import DataContract

#: Images of the labeled SpaceNet 1 release held out for testing in the paper
#: (1,940 of 6,940; the other 5,000 are for training).
PAPER_TEST_FRACTION = 1940 / 6940


class SpaceNet1ImageNetDataModule(DataContract, SpaceNet1DataModule):
    """SpaceNet 1 building segmentation for ViTs initialised from natural images.

    Reuses torchgeo's :class:`~torchgeo.datamodules.SpaceNet1DataModule` (the
    RGB 406 x 439 px chips padded to 448 x 448, a multiple of both 14 and 16 px
    patches, and its augmentations) and changes two things to match the ExPLoRA
    paper: normalisation with the ImageNet statistics of the DinoV2 / MAE
    checkpoints, and the split sizes, 1,940 test images out of the 6,940
    labeled ones. torchgeo needs a validation split, so by default 10 % of the
    images are held out from the paper's 5,000 training images for validation.

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
        **kwargs: Any,
    ) -> None:
        """Initialize a new SpaceNet1ImageNetDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            val_split_pct: Fraction of the labeled images used for validation.
            test_split_pct: Fraction of the labeled images used for testing.
            **kwargs: Additional keyword arguments passed to
                :class:`~torchgeo.datasets.SpaceNet1` (``root``, ...).

        Raises:
            ValueError: If ``image`` is not ``'3band'`` (the ImageNet statistics
                are for RGB).
        """
        image = kwargs.setdefault('image', '3band')
        if image != '3band':
            raise ValueError(
                f"image={image!r}: this datamodule normalises RGB ('3band') chips "
                'with ImageNet statistics; use torchgeo.datamodules.'
                'SpaceNet1DataModule for 8-band chips'
            )
        super().__init__(
            batch_size, num_workers, val_split_pct, test_split_pct, **kwargs
        )
