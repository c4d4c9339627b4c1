"""EuroSAT datamodule for the SatMAE group-channel ViT (the ExPLoRA paper's setup)."""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import kornia.augmentation as K
from torchgeo.datamodules import EuroSATDataModule
from torchgeo.datasets.utils import Sample

from ..sensors import SENTINEL2, Normalization
from .contract import DataContract, device_normalize, device_stats
from .image_splits import chain_transforms, train_augmentation

#: The 10 Sentinel-2 bands of the SatMAE group-channel ViT, in its input order
#: (B1, B9 and B10 dropped), with torchgeo's EuroSAT band names.
SATMAE_BANDS = ('B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A', 'B11', 'B12')


def _satmae_scale(sample: Sample, norm: Normalization) -> Sample:
    """Scale a sample's image with *norm* (SatMAE's ``clip((x - low) / span, 0, 1)``).

    Args:
        sample: A sample with an ``'image'`` of shape (C, H, W).
        norm: The ``'satmae'`` normalisation of the sample's bands.

    Returns:
        The sample with its image scaled to [0, 1].
    """
    return {**sample, 'image': norm(sample['image'])}


class EuroSATSatMAEDataModule(DataContract, EuroSATDataModule):
    """EuroSAT as the ExPLoRA paper fine-tunes it: 13-band release, SatMAE inputs.

    Reuses torchgeo's :class:`~torchgeo.datasets.EuroSAT` and its splits, and
    changes what the model sees to match the SatMAE group-channel ViT
    pre-trained on fMoW-Sentinel: the 10 SatMAE bands in their order, each scaled
    with the fMoW-Sentinel statistics (:data:`~explora_geo.sensors.SENTINEL2`) as ``clip((x - (mean - 2 std)) / (4 std),
    0, 1)`` (per sample, before any resampling, as in SatMAE), and 96 x 96 px
    images (the 64 px chips are upsampled). Training batches get a random resized
    crop (SatMAE's scale range 0.2-1) and a horizontal flip; evaluation batches
    are resized to ``image_size / 0.875`` and centre-cropped, SatMAE's evaluation
    resize.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 96,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        bands: Sequence[str] = SATMAE_BANDS,
        **kwargs: Any,
    ) -> None:
        """Initialize a new EuroSATSatMAEDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: Height and width of the images fed to the model.
            crop_scale: Area range of the random resized crop of training images.
            bands: EuroSAT band names to load, in model input order.
            **kwargs: Additional keyword arguments passed to
                :class:`~torchgeo.datasets.EuroSAT` (``root``, ``download``, ...).
        """
        bands = tuple(bands)
        # torchgeo names bands 'B02', the Sentinel-2 sensor 'B2'.
        names = [b[0] + b[1:].lstrip('0') for b in bands]
        self.normalization = SENTINEL2.normalization('satmae', names)
        scale: Callable[[Sample], Sample] = partial(
            _satmae_scale, norm=self.normalization
        )
        transforms = chain_transforms(scale, kwargs.pop('transforms', None))
        super().__init__(
            batch_size, num_workers, bands=bands, transforms=transforms, **kwargs
        )
        self.image_size = image_size
        self.mean, self.std = device_stats(self.normalization)
        self.aug = K.AugmentationSequential(
            K.Resize(int(image_size / 0.875), antialias=True),
            K.CenterCrop(image_size),
            # Images arrive in [0, 1]; the device-side step is the identity.
            device_normalize(self.normalization),
            data_keys=None,
            keepdim=True,
        )
        # Images arrive in [0, 1] from the dataset: no device normalisation.
        self.train_aug = train_augmentation(None, image_size, crop_scale)
