from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from torchgeo.datasets import SpaceNet1

from explora_geo.datamodules.spacenet1 import SpaceNet1ImageNetDataModule
from explora_geo.sensors import IMAGENET_RGB
from tests.datamodules.lengths import length

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_RGB.stats()


def make_listing(root: Path, count: int) -> None:
    """Create SpaceNet 1's file listing (empty files: setup only lists them)."""
    base = root / 'SN1_buildings' / 'train'
    (base / '3band').mkdir(parents=True)
    (base / 'geojson').mkdir()
    for i in range(1, count + 1):
        (base / '3band' / f'3band_AOI_1_RIO_img{i}.tif').touch()
        (base / 'geojson' / f'Geo_AOI_1_RIO_img{i}.geojson').touch()


def test_reads_torchgeo_spacenet1(tmp_path: Path) -> None:
    make_listing(tmp_path, 20)
    dm = SpaceNet1ImageNetDataModule(root=tmp_path)
    dm.setup('fit')
    assert (
        length(dm.train_dataset) + length(dm.val_dataset) + length(dm.test_dataset)
        == 20
    )
    assert isinstance(dm.dataset, SpaceNet1)
    assert dm.dataset.image == '3band'


def test_paper_split_sizes() -> None:
    dm = SpaceNet1ImageNetDataModule()
    # the 6,940 labeled chips of the release, without reading files
    dm.spacenet_ds_class = lambda split, **kwargs: list(range(6940))  # type: ignore[assignment]
    dm.setup('fit')
    sizes = [length(dm.train_dataset), length(dm.val_dataset), length(dm.test_dataset)]
    assert sizes[2] == 1940
    assert sizes[0] + sizes[1] == 5000
    assert sizes == [4306, 694, 1940]


def test_imagenet_normalisation() -> None:
    dm = SpaceNet1ImageNetDataModule()
    image = (
        (IMAGENET_MEAN + 2 * IMAGENET_STD)
        .view(1, 3, 1, 1)
        .expand(1, 3, 448, 448)
        .clone()
    )
    out = dm.aug({'image': image})['image']
    torch.testing.assert_close(out, torch.full((1, 3, 448, 448), 2.0))


def test_rgb_only() -> None:
    with pytest.raises(ValueError, match="image='8band'"):
        SpaceNet1ImageNetDataModule(image='8band')


def test_unlabeled_training_images_in_unit_scale() -> None:
    root = Path(__file__).parents[1] / 'data' / 'spacenet1'
    dm = SpaceNet1ImageNetDataModule(
        root=root, unlabeled=True, image_size=56, batch_size=2
    )
    assert dm.normalization == IMAGENET_RGB.normalization('unit')
    assert dm.classes is None
    dm.setup('fit')
    # the 10 fixture chips: 7 train, 1 validation, 2 test (random_split rounding)
    assert length(dm.train_dataset) == 7
    assert dm.val_dataset is None and dm.test_dataset is None
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {'image'}
    assert batch['image'].shape == (2, 3, 56, 56)
    # Divided by 255 only, in training as in evaluation: no augmentation.
    assert dm.train_aug is not None
    torch.testing.assert_close(dm.train_aug(batch)['image'], batch['image'] / 255)
    torch.testing.assert_close(dm.aug(batch)['image'], batch['image'] / 255)


def test_unlabeled_default_size_crops_without_resampling() -> None:
    root = Path(__file__).parents[1] / 'data' / 'spacenet1'
    dm = SpaceNet1ImageNetDataModule(root=root, unlabeled=True)
    dm.setup('fit')
    assert isinstance(dm.train_dataset, Subset)
    image = dm.train_dataset[0]['image']
    assert image.shape == (3, 406, 406)
    raw = SpaceNet1(root)[dm.train_dataset.indices[0]]['image']
    torch.testing.assert_close(image, raw[:, :, 16:422])


def test_unlabeled_refuses_transforms() -> None:
    with pytest.raises(ValueError, match='transforms= is not supported'):
        SpaceNet1ImageNetDataModule(unlabeled=True, transforms=lambda s: s)
