"""Datamodules of the ExPLoRA experiments (TorchGeo ``BaseDataModule`` subclasses)."""

from .camelyon17 import Camelyon17DataModule
from .eurosat import EuroSATSatMAEDataModule
from .fmow import FMoWDataModule, FMoWSentinelDataModule, FMoWTemporalDataModule
from .globalwheat import GlobalWheatDataModule
from .iwildcam import IWildCamDataModule
from .naip_landcover import NAIPLandCoverDataModule
from .spacenet1 import SpaceNet1ImageNetDataModule

__all__ = (
    'Camelyon17DataModule',
    'EuroSATSatMAEDataModule',
    'FMoWDataModule',
    'FMoWSentinelDataModule',
    'FMoWTemporalDataModule',
    'GlobalWheatDataModule',
    'IWildCamDataModule',
    'NAIPLandCoverDataModule',
    'SpaceNet1ImageNetDataModule',
)
