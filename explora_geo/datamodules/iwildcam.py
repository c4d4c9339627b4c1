"""iWildCam2020-WILDS datamodule."""

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

    Arguments: those of :class:`ImageClassificationSplitsDataModule` and
    :class:`ImageSplitsDataModule` with their defaults (*val_split* ``'val'``
    or ``'id_val'``, *test_split* ``'test'`` or ``'id_test'``); other keyword
    arguments go to :class:`~explora_geo.datasets.IWildCam` (``root``,
    ``on_error``, ...).

    .. versionadded:: 0.1
    """

    labeled_class = IWildCam
    unlabeled_class = IWildCamUnlabeled
