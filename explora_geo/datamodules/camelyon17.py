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

    labeled_class = Camelyon17
    unlabeled_class = Camelyon17Unlabeled

    def __init__(
        self,
        crop_scale: tuple[float, float] | None = None,
        pretrain_split: str = 'train_unlabeled',
        **kwargs: Any,
    ) -> None:
        """Initialize a new Camelyon17DataModule instance.

        Args:
            crop_scale: Area range of a random resized crop of training images,
                or None (default) for no crop.
            pretrain_split: Split read with ``unlabeled=True``; *pretrain_val_split*
                may name another (e.g. ``'val_unlabeled'``).
            **kwargs: Arguments of :class:`ImageSplitsDataModule` (*batch_size*,
                *image_size*, *unlabeled*, *val_split* ``'val'`` or ``'id_val'``,
                ...) and of :class:`~explora_geo.datasets.Camelyon17` (``root``,
                ``on_error``, ...).
        """
        super().__init__(
            crop_scale=crop_scale,
            vertical_flip=True,
            pretrain_split=pretrain_split,
            **kwargs,
        )
