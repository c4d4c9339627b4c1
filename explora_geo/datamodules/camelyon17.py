"""Camelyon17-WILDS datamodule."""

from typing import Any

from ..datasets.camelyon17 import Camelyon17, Camelyon17Unlabeled
from .image_splits import ImageClassificationSplitsDataModule


class Camelyon17DataModule(ImageClassificationSplitsDataModule):
    """LightningDataModule for the Camelyon17-WILDS dataset.

    Uses the official WILDS splits: ``train``, ``id_val`` (same hospitals),
    ``val`` (hospital 1) and ``test`` (hospital 2). The 96 px patches are resized
    to *image_size* and normalised with ImageNet statistics. Training batches
    are flipped horizontally and vertically but, by default, not cropped: the
    label says whether the central 32 x 32 px region holds tumour tissue, and a
    random crop could cut that region out. With ``unlabeled=True`` the training
    loader yields patches of *pretrain_split* of the unlabeled release
    (``'train_unlabeled'``, as in the ExPLoRA paper).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 224,
        crop_scale: tuple[float, float] | None = None,
        unlabeled: bool = False,
        val_split: str = 'val',
        test_split: str = 'test',
        pretrain_split: str = 'train_unlabeled',
        pretrain_val_split: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize a new Camelyon17DataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: Height and width of the images fed to the model.
            crop_scale: Area range of a random resized crop of training images,
                or None (default) for no crop.
            unlabeled: If True, load images only, for pre-training.
            val_split: Split used for validation (``'val'`` or ``'id_val'``).
            test_split: Split used for testing.
            pretrain_split: Split read with ``unlabeled=True``.
            pretrain_val_split: Split used for validation with
                ``unlabeled=True`` (e.g. ``'val_unlabeled'``), or None.
            **kwargs: Additional keyword arguments passed to
                :class:`~explora_geo.datasets.Camelyon17` (``root``,
                ``on_error``, ...).
        """
        super().__init__(
            Camelyon17,
            Camelyon17Unlabeled,
            batch_size,
            num_workers,
            image_size=image_size,
            crop_scale=crop_scale,
            vertical_flip=True,
            unlabeled=unlabeled,
            val_split=val_split,
            test_split=test_split,
            pretrain_split=pretrain_split,
            pretrain_val_split=pretrain_val_split,
            **kwargs,
        )
