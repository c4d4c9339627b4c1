from pathlib import Path

import pytest
import torch

from explora_geo.datamodules.naip_landcover import NAIPLandCoverDataModule
from explora_geo.datasets.naip_landcover import NAIPLandCover
from explora_geo.sensors import IMAGENET_RGB
from tests.datamodules.lengths import length

ROOT = Path(__file__).parents[1] / 'data' / 'naip_landcover'


def test_rgb_defaults() -> None:
    dm = NAIPLandCoverDataModule(batch_size=2, image_size=32, root=ROOT)
    assert dm.normalization == IMAGENET_RGB.normalization('standard')
    torch.testing.assert_close(dm.mean, IMAGENET_RGB.stats()[0])
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    assert batch['image'].shape == (2, 3, 32, 32)
    dm.setup('test')
    # the paper reports on the validation split
    assert length(dm.test_dataset) == len(NAIPLandCover(ROOT, split='val'))


def test_four_bands_need_statistics() -> None:
    with pytest.raises(
        ValueError, match=r"No default normalisation for bands \('R', 'G', 'B', 'NIR'\)"
    ):
        NAIPLandCoverDataModule(root=ROOT, bands=('R', 'G', 'B', 'NIR'))
    with pytest.raises(ValueError, match='one value per band'):
        NAIPLandCoverDataModule(
            root=ROOT,
            bands=('R', 'G', 'B', 'NIR'),
            mean=[1.0, 2.0, 3.0],
            std=[1.0, 1.0, 1.0],
        )
    dm = NAIPLandCoverDataModule(
        batch_size=3,
        image_size=16,
        root=ROOT,
        bands=('R', 'G', 'B', 'NIR'),
        mean=[0.0, 0.0, 0.0, 10.0],
        std=[1.0, 1.0, 1.0, 2.0],
        unlabeled=True,
    )
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {'image'}
    assert batch['image'].shape == (3, 4, 16, 16)
    # Unlabelled (pre-training) batches are scaled to [0, 1] only ...
    assert dm.normalization.kind == 'unit'
    torch.testing.assert_close(dm.aug(batch)['image'], batch['image'] / 255)
    # ... labelled ones standardised with the given statistics.
    labelled = NAIPLandCoverDataModule(
        root=ROOT,
        bands=('R', 'G', 'B', 'NIR'),
        mean=[0.0, 0.0, 0.0, 10.0],
        std=[1.0, 1.0, 1.0, 2.0],
    )
    normalized = labelled.aug(batch)['image']
    torch.testing.assert_close(normalized[:, 3], (batch['image'][:, 3] - 10) / 2)
    assert labelled.normalization.bands == ('R', 'G', 'B', 'NIR')
