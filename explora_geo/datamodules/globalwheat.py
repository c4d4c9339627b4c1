"""GlobalWheat-WILDS datamodule."""

from typing import Any

import kornia.augmentation as K
from torchgeo.datamodules.utils import collate_fn_detection

from ..datasets.globalwheat import GlobalWheat, GlobalWheatUnlabeled
from .image_splits import ImageSplitsDataModule, train_augmentation


class GlobalWheatDataModule(ImageSplitsDataModule):
    """LightningDataModule for the GlobalWheat-WILDS detection dataset.

    Uses the official WILDS splits: ``train``; ``val`` and ``test`` (unseen
    acquisition sessions); ``id_val`` and ``id_test``. Images are resized to
    *image_size* x *image_size* with their boxes (the release's images are
    1024 x 1024, the default) and normalised with ImageNet statistics; training
    batches are flipped horizontally and vertically, boxes included. Batches
    hold a stacked ``'image'`` and per-image lists ``'bbox_xyxy'`` and
    ``'label'`` (TorchGeo's detection collation). With ``unlabeled=True`` the
    training loader yields images of *pretrain_split* only (``'train'``, the
    labeled training images, as in the ExPLoRA paper, or an unlabeled split),
    scaled to [0, 1] and not augmented.

    Box coordinates follow kornia's convention when augmented: a horizontal
    flip maps ``x`` to ``W - 1 - x`` and a resize scales by
    ``(W' - 1) / (W - 1)``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: int = 1024,
        unlabeled: bool = False,
        val_split: str = 'val',
        test_split: str = 'test',
        pretrain_split: str = 'train',
        **kwargs: Any,
    ) -> None:
        """Initialize a new GlobalWheatDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: Height and width of the images fed to the model.
            unlabeled: If True, load images only, for pre-training.
            val_split: Split used for validation (``'val'`` or ``'id_val'``).
            test_split: Split used for testing (``'test'`` or ``'id_test'``).
            pretrain_split: Split of
                :class:`~explora_geo.datasets.GlobalWheatUnlabeled` read with
                ``unlabeled=True``.
            **kwargs: Additional keyword arguments passed to
                :class:`~explora_geo.datasets.GlobalWheat` (``root``,
                ``on_error``, ...).
        """
        super().__init__(
            GlobalWheat,
            GlobalWheatUnlabeled,
            batch_size,
            num_workers,
            unlabeled=unlabeled,
            val_split=val_split,
            test_split=test_split,
            pretrain_split=pretrain_split,
            **kwargs,
        )
        self.image_size = image_size
        self.collate_fn = collate_fn_detection
        self.sample_transform = K.AugmentationSequential(
            K.Resize((image_size, image_size), antialias=True),
            data_keys=None,
            keepdim=True,
        )
        if not self.unlabeled:
            self.train_aug = train_augmentation(self.normalization, vertical_flip=True)
