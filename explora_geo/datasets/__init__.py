"""Datasets of the ExPLoRA experiments (TorchGeo ``NonGeoDataset`` subclasses)."""

from .camelyon17 import Camelyon17, Camelyon17Unlabeled
from .fmow import FMoW, FMoWTemporal
from .fmow_base import FMoWBase
from .fmow_metadata import FMOW_CLASSES, FMoWSampleError
from .fmow_sentinel import FMoWSentinel
from .globalwheat import GlobalWheat, GlobalWheatUnlabeled
from .image_table import ImageTableDataset, InvalidSampleError
from .iwildcam import IWildCam, IWildCamUnlabeled
from .naip_landcover import NAIPLandCover, NAIPLandCoverUnlabeled

__all__ = (
    'FMOW_CLASSES',
    'Camelyon17',
    'Camelyon17Unlabeled',
    'FMoW',
    'FMoWBase',
    'FMoWSampleError',
    'FMoWSentinel',
    'FMoWTemporal',
    'GlobalWheat',
    'GlobalWheatUnlabeled',
    'IWildCam',
    'IWildCamUnlabeled',
    'ImageTableDataset',
    'InvalidSampleError',
    'NAIPLandCover',
    'NAIPLandCoverUnlabeled',
)
