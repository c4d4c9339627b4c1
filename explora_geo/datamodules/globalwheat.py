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

    labeled_class = GlobalWheat
    unlabeled_class = GlobalWheatUnlabeled

    def __init__(
        self, batch_size: int = 8, image_size: int = 1024, **kwargs: Any
    ) -> None:
        """Initialize a new GlobalWheatDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            image_size: Height and width of the images fed to the model.
            **kwargs: Arguments of :class:`ImageSplitsDataModule` (*num_workers*,
                *unlabeled*, *val_split* ``'val'`` or ``'id_val'``, *test_split*
                ``'test'`` or ``'id_test'``, *pretrain_split*: a split of
                :class:`~explora_geo.datasets.GlobalWheatUnlabeled`, ...) and of
                :class:`~explora_geo.datasets.GlobalWheat` (``root``,
                ``on_error``, ...).
        """
        super().__init__(batch_size=batch_size, image_size=image_size, **kwargs)
        self.collate_fn = collate_fn_detection
        self.sample_transform = K.AugmentationSequential(
            K.Resize((image_size, image_size), antialias=True),
            data_keys=None,
            keepdim=True,
        )
        if not self.unlabeled:
            self.train_aug = train_augmentation(self.normalization, vertical_flip=True)
