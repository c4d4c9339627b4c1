"""Every datamodule states, in every mode, the normalisation it applies and its classes."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule

from explora_geo.datamodules import (
    Camelyon17DataModule,
    EuroSATSatMAEDataModule,
    FMoWDataModule,
    FMoWSentinelDataModule,
    FMoWTemporalDataModule,
    GlobalWheatDataModule,
    IWildCamDataModule,
    NAIPLandCoverDataModule,
    SpaceNet1ImageNetDataModule,
)
from explora_geo.sensors import Normalization

DATA = Path(__file__).parents[1] / 'data'

#: name -> (factory taking unlabeled=..., number of classes, unlabelled mode?)
CASES: dict[str, tuple[Callable[..., LightningDataModule], int, bool]] = {
    'camelyon17': (
        lambda **kw: Camelyon17DataModule(
            root=DATA / 'camelyon17', image_size=16, **kw
        ),
        2,
        True,
    ),
    'eurosat': (
        lambda **kw: EuroSATSatMAEDataModule(
            root=DATA / 'eurosat', image_size=16, **kw
        ),
        2,  # the fixture's two class folders
        False,
    ),
    'fmow': (
        lambda **kw: FMoWDataModule(root=DATA / 'fmow', image_size=16, **kw),
        62,
        True,
    ),
    'fmow_sentinel': (
        lambda **kw: FMoWSentinelDataModule(
            root=DATA / 'fmow_sentinel', image_size=8, **kw
        ),
        62,
        True,
    ),
    'fmow_temporal': (
        lambda **kw: FMoWTemporalDataModule(root=DATA / 'fmow', image_size=16, **kw),
        62,
        True,
    ),
    'globalwheat': (
        lambda **kw: GlobalWheatDataModule(
            root=DATA / 'globalwheat', image_size=16, **kw
        ),
        2,
        True,
    ),
    'iwildcam': (
        lambda **kw: IWildCamDataModule(root=DATA / 'iwildcam', image_size=16, **kw),
        4,  # the fixture's categories.csv
        True,
    ),
    'naip_landcover': (
        lambda **kw: NAIPLandCoverDataModule(
            root=DATA / 'naip_landcover', image_size=16, **kw
        ),
        66,
        True,
    ),
    'spacenet1': (
        lambda **kw: SpaceNet1ImageNetDataModule(
            root=DATA / 'spacenet1', image_size=16, **kw
        ),
        3,  # padding, background, building
        True,
    ),
}


def first_batch(dm: Any) -> dict[str, torch.Tensor]:
    """A training batch after the datamodule's device-side step, as a trainer runs it."""
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    aug = dm.train_aug or dm.aug
    return aug(batch)


@pytest.mark.parametrize('name', sorted(CASES))
def test_labelled_mode(name: str) -> None:
    factory, num_classes, _ = CASES[name]
    dm: Any = factory(batch_size=2)
    assert isinstance(dm.normalization, Normalization)
    dm.setup('fit')
    assert dm.classes is not None and len(dm.classes) == num_classes
    # The device-side step is the normalisation it announces.
    mean, std = dm.mean, dm.std
    if dm.normalization.kind == 'satmae':
        assert torch.equal(mean, torch.zeros(len(dm.normalization.bands)))
    else:
        shift, divisor = dm.normalization.affine()
        torch.testing.assert_close(mean, shift)
        torch.testing.assert_close(std, divisor)


@pytest.mark.parametrize('name', sorted(n for n, c in CASES.items() if c[2]))
def test_unlabelled_mode_hands_unit_scale(name: str) -> None:
    factory, _, _ = CASES[name]
    dm: Any = factory(batch_size=2, unlabeled=True)
    assert dm.normalization.output_range == (0.0, 1.0)
    assert dm.classes is None
    image = first_batch(dm)['image']
    assert float(image.min()) >= 0 and float(image.max()) <= 1
