"""The arguments the datamodules offer to YAML configs and their constructors.

The WILDS, NAIP and fMoW datamodules declare the arguments they share once, in a
base class, and forward the others with ``**kwargs``: jsonargparse (LightningCLI,
``torchgeo fit``) must still list every argument, with the subclass's default.
"""

from pathlib import Path
from typing import Any

import pytest
from jsonargparse import ArgumentParser
from lightning import LightningDataModule

from explora_geo.datamodules import (
    Camelyon17DataModule,
    FMoWDataModule,
    FMoWSentinelDataModule,
    FMoWTemporalDataModule,
    GlobalWheatDataModule,
    IWildCamDataModule,
    NAIPLandCoverDataModule,
)
from explora_geo.datasets.camelyon17 import Camelyon17Unlabeled

DATA = Path(__file__).parents[1] / 'data'

#: The arguments of the image-splits datamodules, with their base defaults.
SPLITS = {
    'batch_size': 64,
    'num_workers': 0,
    'image_size': 224,
    'unlabeled': False,
    'train_split': 'train',
    'val_split': 'val',
    'test_split': 'test',
    'pretrain_split': 'train',
    'pretrain_val_split': None,
    'normalization': None,
}
FMOW = {
    'batch_size': 64,
    'num_workers': 0,
    'image_size': 224,
    'crop_pct': 0.875,
    'unlabeled': False,
}

EXPECTED: dict[type[LightningDataModule], dict[str, Any]] = {
    Camelyon17DataModule: {
        **SPLITS,
        'crop_scale': None,
        'pretrain_split': 'train_unlabeled',
    },
    IWildCamDataModule: {**SPLITS, 'crop_scale': (0.08, 1.0), 'vertical_flip': False},
    GlobalWheatDataModule: {**SPLITS, 'batch_size': 8, 'image_size': 1024},
    NAIPLandCoverDataModule: {
        **{k: v for k, v in SPLITS.items() if k != 'normalization'},
        'crop_scale': (0.08, 1.0),
        'test_split': 'val',
        'bands': ('R', 'G', 'B'),
        'mean': None,
        'std': None,
    },
    FMoWDataModule: FMOW,
    FMoWSentinelDataModule: {**FMOW, 'image_size': 96, 'normalization': 'satmae'},
    FMoWTemporalDataModule: {
        **FMOW,
        'sensor': 'rgb',
        'image_size': None,
        'normalization': 'satmae',
    },
}


@pytest.mark.parametrize('cls', list(EXPECTED), ids=lambda c: c.__name__)
def test_config_lists_every_argument(cls: type[LightningDataModule]) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(cls, 'data')
    assert vars(parser.get_defaults().data) == EXPECTED[cls]


def test_forwarded_keywords_reach_the_base() -> None:
    dm = Camelyon17DataModule(
        batch_size=3,
        num_workers=0,
        image_size=32,
        unlabeled=True,
        pretrain_val_split='val_unlabeled',
        root=DATA / 'camelyon17',
    )
    assert (dm.batch_size, dm.image_size, dm.unlabeled) == (3, 32, True)
    assert (dm.pretrain_split, dm.pretrain_val_split) == (
        'train_unlabeled',
        'val_unlabeled',
    )
    # What no datamodule argument takes goes to the dataset classes.
    assert dm.kwargs == {'root': DATA / 'camelyon17'}
    dm.setup('fit')
    assert isinstance(dm.val_dataset, Camelyon17Unlabeled)
    assert dm.val_dataset.split == 'val_unlabeled'
    assert dm.train_dataset is not None
    assert dm.train_dataset[0]['image'].shape == (3, 32, 32)


def test_fmow_subclass_arguments_reach_the_base() -> None:
    dm = FMoWTemporalDataModule(
        sensor='sentinel', normalization='zscore', batch_size=5, crop_pct=0.5
    )
    # image_size None means the sensor's default; crop_pct sizes the dataset.
    assert (dm.batch_size, dm.image_size, dm.crop_pct) == (5, 96, 0.5)
    assert dm.kwargs == {'sensor': 'sentinel', 'normalization': 'none', 'size': 192}
    assert dm.normalization.kind == 'standard'
    with pytest.raises(ValueError, match=r"normalization='x' is invalid"):
        FMoWSentinelDataModule(normalization='x')  # type: ignore[arg-type]
