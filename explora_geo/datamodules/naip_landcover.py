"""NAIP land-cover datamodule."""

from collections.abc import Sequence
from typing import Any

from ..datasets.naip_landcover import NAIPLandCover, NAIPLandCoverUnlabeled
from ..sensors import IMAGENET_RGB, Normalization
from .image_splits import ImageClassificationSplitsDataModule


class NAIPLandCoverDataModule(ImageClassificationSplitsDataModule):
    """LightningDataModule for the NAIP land-cover dataset (66 classes).

    Uses the ``train`` and ``val`` splits; the ExPLoRA paper reports results on
    the validation split, which is therefore also the default *test_split*.
    Chips are resized to *image_size* (shorter side, then centre crop); training
    batches get a random resized crop and horizontal and vertical flips. The
    default RGB bands are normalised with ImageNet statistics (NAIP is 8-bit,
    like the natural images the starting checkpoints saw); other band sets need
    *mean* and *std*. With ``unlabeled=True`` the training loader yields the
    chips of *pretrain_split* without labels.

    .. versionadded:: 0.1
    """

    labeled_class = NAIPLandCover
    unlabeled_class = NAIPLandCoverUnlabeled

    def __init__(
        self,
        test_split: str = 'val',
        bands: Sequence[str] = NAIPLandCover.rgb_bands,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize a new NAIPLandCoverDataModule instance.

        Args:
            test_split: Split used for testing (``'test'`` if the dataset has
                one).
            bands: Bands to load, from ``('R', 'G', 'B', 'NIR')``.
            mean: Per-band means (0-255 scale); ImageNet's for R, G, B if None.
            std: Per-band standard deviations; ImageNet's for R, G, B if None.
            **kwargs: Arguments of :class:`ImageClassificationSplitsDataModule`
                and :class:`ImageSplitsDataModule` (*batch_size*, *image_size*,
                *crop_scale*, *unlabeled*, *pretrain_split*, ...) and of
                :class:`~explora_geo.datasets.NAIPLandCover` (``root``,
                ``on_error``, ...).

        Raises:
            ValueError: If *mean* or *std* is missing for bands other than R, G,
                B, or their lengths differ from the number of bands.
        """
        bands = tuple(bands)
        if mean is None or std is None:
            if bands != NAIPLandCover.rgb_bands:
                raise ValueError(
                    f'No default normalisation for bands {bands}: pass mean= and '
                    'std= (one value per band, 0-255 scale)'
                )
            mean, std = IMAGENET_RGB.mean, IMAGENET_RGB.std
        if len(mean) != len(bands) or len(std) != len(bands):
            raise ValueError(
                f'mean and std need one value per band {bands}; got {len(mean)} '
                f'and {len(std)}'
            )
        norm = Normalization(
            'standard', bands, tuple(map(float, mean)), tuple(map(float, std)), 255.0
        )
        super().__init__(
            vertical_flip=True,
            test_split=test_split,
            bands=bands,
            normalization=norm,
            **kwargs,
        )
