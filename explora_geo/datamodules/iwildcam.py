"""iWildCam2020-WILDS datamodule."""

from typing import Any

from ..datasets.iwildcam import IWildCam, IWildCamUnlabeled
from .image_splits import ImageClassificationSplitsDataModule


class IWildCamDataModule(ImageClassificationSplitsDataModule):
    """LightningDataModule for the iWildCam2020-WILDS dataset.

    Uses the official WILDS splits: ``train``; ``val`` and ``test`` (unseen
    camera locations); ``id_val`` and ``id_test`` (training locations). Images
    are resized to *image_size* (shorter side, then centre crop) and normalised
    with ImageNet statistics; training batches get a random resized crop and a
    horizontal flip. With ``unlabeled=True`` the training loader yields images
    of *pretrain_split* only: ``'train'`` (the labeled training images, which
    the ExPLoRA paper pre-trains on) or ``'extra_unlabeled'``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 224,
        crop_scale: tuple[float, float] | None = (0.08, 1.0),
        unlabeled: bool = False,
        val_split: str = 'val',
        test_split: str = 'test',
        pretrain_split: str = 'train',
        **kwargs: Any,
    ) -> None:
        """Initialize a new IWildCamDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: Height and width of the images fed to the model.
            crop_scale: Area range of the random resized crop of training
                images, or None for no crop.
            unlabeled: If True, load images only, for pre-training.
            val_split: Split used for validation (``'val'`` or ``'id_val'``).
            test_split: Split used for testing (``'test'`` or ``'id_test'``).
            pretrain_split: Split read with ``unlabeled=True``.
            **kwargs: Additional keyword arguments passed to
                :class:`~explora_geo.datasets.IWildCam` (``root``, ``on_error``,
                ...).
        """
        super().__init__(
            IWildCam,
            IWildCamUnlabeled,
            batch_size,
            num_workers,
            image_size=image_size,
            crop_scale=crop_scale,
            unlabeled=unlabeled,
            val_split=val_split,
            test_split=test_split,
            pretrain_split=pretrain_split,
            **kwargs,
        )
