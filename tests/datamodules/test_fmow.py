import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from torchgeo.tasks import Classification

from explora_geo.datamodules.fmow import (
    FMoWDataModule,
    FMoWSentinelDataModule,
    FMoWTemporalDataModule,
)
from explora_geo.datasets.fmow import FMoW, FMoWTemporal
from explora_geo.datasets.fmow_base import resize_and_center_crop
from explora_geo.datasets.fmow_metadata import FMOW_CLASSES
from explora_geo.datasets.fmow_sentinel import FMoWSentinel
from explora_geo.sensors import FMOW_RGB, SENTINEL2

RGB = os.path.join('tests', 'data', 'fmow')
SENTINEL = os.path.join('tests', 'data', 'fmow_sentinel')


def transfer(
    dm: FMoWDataModule | FMoWSentinelDataModule | FMoWTemporalDataModule,
    batch: dict,
    stage: str,
) -> dict:
    """Run the datamodule's device-side augmentation as a trainer in *stage* does."""
    flags = {
        'training': False,
        'validating': False,
        'sanity_checking': False,
        'testing': False,
        'predicting': False,
    }
    flags[stage] = True
    dm.trainer = SimpleNamespace(**flags)  # type: ignore[assignment]
    return dm.on_after_batch_transfer(batch, 0)


class TestFMoWDataModule:
    def test_paper_defaults(self) -> None:
        dm = FMoWDataModule(root=RGB)
        assert dm.image_size == 224
        assert dm.kwargs['size'] == 256  # SatMAE: resize to 224 / 0.875, crop 224
        assert dm.normalization == FMOW_RGB.normalization('standard')
        torch.testing.assert_close(dm.mean, torch.tensor(FMOW_RGB.mean))
        torch.testing.assert_close(dm.std, torch.tensor(FMOW_RGB.std))
        assert dm.classes == FMOW_CLASSES and len(dm.classes) == 62
        assert FMoWSentinelDataModule(root=SENTINEL).kwargs['size'] == 109

    def test_eval_normalisation(self) -> None:
        dm = FMoWDataModule(root=RGB, batch_size=2, image_size=16)
        dm.setup('fit')
        batch = next(iter(dm.val_dataloader()))
        out = transfer(dm, {k: v.clone() for k, v in batch.items()}, 'validating')
        assert out['image'].shape == (2, 3, 16, 16)
        dataset = FMoW(RGB, 'val', size=18)
        crop = torch.stack([dataset[i]['image'][:, 1:17, 1:17] for i in range(2)])
        expected = (crop - 255 * torch.tensor(FMoW.mean).view(1, 3, 1, 1)) / (
            255 * torch.tensor(FMoW.std).view(1, 3, 1, 1)
        )
        torch.testing.assert_close(out['image'], expected)
        assert out['label'].tolist() == [11, 11]

    def test_train_augmentation(self) -> None:
        dm = FMoWDataModule(root=RGB, batch_size=3, image_size=16)
        dm.setup('fit')
        loader = dm.train_dataloader()
        assert loader.drop_last
        batch = next(iter(loader))
        out = transfer(dm, batch, 'training')
        assert out['image'].shape == (3, 3, 16, 16)
        assert out['bbox_xyxy'].shape == (3, 1, 4)
        assert out['timestamp'].shape == (3, 3)
        assert out['label'].dtype == torch.int64

    def test_unlabeled(self) -> None:
        # Pre-training objectives crop and normalise: batches are the dataset's
        # images (resized to image_size / crop_pct) divided by 255, nothing else.
        dm = FMoWDataModule(root=RGB, batch_size=2, image_size=16, unlabeled=True)
        assert dm.normalization == FMOW_RGB.normalization('unit')
        assert dm.classes is None
        dm.setup('fit')
        images = torch.stack([dm.train_dataset[i]['image'] for i in range(2)])  # type: ignore[index]
        out = transfer(dm, {'image': images.clone()}, 'training')['image']
        assert out.shape == (2, 3, 18, 18)
        torch.testing.assert_close(out, images / 255)
        batch = next(iter(dm.train_dataloader()))
        assert set(batch) == {'image'}

    def test_test_split_and_plot(self) -> None:
        dm = FMoWDataModule(root=RGB, batch_size=1, image_size=16)
        dm.setup('test')
        assert len(dm.test_dataset) == 1  # type: ignore[arg-type]
        dm.setup('validate')
        assert dm.plot(dm.val_dataset[0]) is not None  # type: ignore[index]

    def test_invalid(self) -> None:
        with pytest.raises(ValueError, match='size is set by the datamodule'):
            FMoWDataModule(root=RGB, size=32)
        with pytest.raises(ValueError, match='crop_pct=1.5 are invalid'):
            FMoWDataModule(root=RGB, crop_pct=1.5)


class TestFMoWSentinelDataModule:
    def test_satmae(self) -> None:
        dm = FMoWSentinelDataModule(
            root=SENTINEL, batch_size=2, image_size=8, crop_pct=0.8
        )
        assert dm.kwargs['normalization'] == 'satmae'
        assert dm.kwargs['size'] == 10
        dm.setup('fit')
        batch = next(iter(dm.val_dataloader()))
        out = transfer(dm, {k: v.clone() for k, v in batch.items()}, 'validating')
        dataset = FMoWSentinel(SENTINEL, 'val', normalization='satmae')
        resized = [resize_and_center_crop(dataset[i]['image'], 10)[0] for i in range(2)]
        crop = torch.stack([image[:, 1:9, 1:9] for image in resized])
        torch.testing.assert_close(out['image'], crop)
        assert out['image'].min() >= 0 and out['image'].max() <= 1

    def test_zscore_and_bands(self) -> None:
        bands = ('B4', 'B8', 'B11')
        dm = FMoWSentinelDataModule(
            root=SENTINEL,
            batch_size=2,
            image_size=9,
            crop_pct=1.0,
            normalization='zscore',
            bands=bands,
        )
        assert dm.kwargs['normalization'] == 'none'
        dm.setup('fit')
        batch = next(iter(dm.val_dataloader()))
        out = transfer(dm, {k: v.clone() for k, v in batch.items()}, 'validating')
        raw = torch.stack(
            [
                FMoWSentinel(SENTINEL, 'val', bands=bands, size=9)[i]['image']
                for i in range(2)
            ]
        )
        mean, std = SENTINEL2.stats(bands)
        expected = (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        torch.testing.assert_close(out['image'], expected)
        assert dm.normalization == SENTINEL2.normalization('standard', bands)

    def test_unlabeled(self) -> None:
        dm = FMoWSentinelDataModule(
            root=SENTINEL, batch_size=4, image_size=8, unlabeled=True
        )
        dm.setup('fit')
        assert dm.normalization == SENTINEL2.normalization(
            'satmae', FMoWSentinel.default_bands
        )
        batch = next(iter(dm.train_dataloader()))
        assert set(batch) == {'image'}
        images = batch['image'].clone()
        out = transfer(dm, batch, 'training')['image']
        assert out.shape == (4, 10, 9, 9)
        torch.testing.assert_close(out, images)
        assert out.min() >= 0 and out.max() <= 1

    def test_invalid_normalization(self) -> None:
        with pytest.raises(ValueError, match="normalization='minmax' is invalid"):
            FMoWSentinelDataModule(root=SENTINEL, normalization='minmax')  # type: ignore[arg-type]

    @pytest.mark.slow
    def test_fit(self, tmp_path: Path) -> None:
        dm = FMoWSentinelDataModule(root=SENTINEL, batch_size=2, image_size=16)
        task = Classification(model='resnet18', in_channels=10, num_classes=62)
        trainer = Trainer(
            fast_dev_run=True,
            accelerator='cpu',
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(model=task, datamodule=dm)
        assert trainer.state.finished


class TestFMoWTemporalDataModule:
    def test_defaults(self) -> None:
        assert FMoWTemporalDataModule(root=RGB).image_size == 224
        sentinel = FMoWTemporalDataModule(root=SENTINEL, sensor='sentinel')
        assert sentinel.image_size == 96
        assert sentinel.kwargs['normalization'] == 'satmae'
        assert sentinel.kwargs['sensor'] == 'sentinel'

    def test_same_crop_on_every_frame(self) -> None:
        dm = FMoWTemporalDataModule(root=RGB, batch_size=2, image_size=16)
        dm.setup('fit')
        # Location airport_1 has a single image, repeated in all three frames.
        lone = dm.train_dataset[4]  # type: ignore[index]
        batch = {k: torch.stack([v, v]) for k, v in lone.items()}
        torch.manual_seed(0)
        out = transfer(dm, batch, 'training')
        assert out['image'].shape == (2, 3, 3, 16, 16)
        assert out['timestamps'].shape == (2, 3, 3)
        assert torch.equal(out['image'][:, 0], out['image'][:, 1])
        assert torch.equal(out['image'][:, 0], out['image'][:, 2])
        # Different samples of the batch get different crops.
        assert not torch.equal(out['image'][0], out['image'][1])

    def test_eval_normalisation(self) -> None:
        dm = FMoWTemporalDataModule(root=RGB, batch_size=1, image_size=16)
        dm.setup('fit')
        batch = next(iter(dm.val_dataloader()))
        out = transfer(dm, {k: v.clone() for k, v in batch.items()}, 'validating')
        frames = FMoWTemporal(RGB, 'val', size=18)[0]['image'][:, :, 1:17, 1:17]
        expected = (frames - 255 * torch.tensor(FMoW.mean).view(1, 3, 1, 1)) / (
            255 * torch.tensor(FMoW.std).view(1, 3, 1, 1)
        )
        torch.testing.assert_close(out['image'][0], expected)

    def test_unlabeled_keeps_timestamps(self) -> None:
        dm = FMoWTemporalDataModule(
            root=SENTINEL, sensor='sentinel', batch_size=2, image_size=8, unlabeled=True
        )
        dm.setup('fit')
        batch = next(iter(dm.train_dataloader()))
        assert set(batch) == {'image', 'timestamps'}
        images = batch['image'].clone()
        out = transfer(dm, batch, 'training')
        assert out['image'].shape == (2, 3, 10, 9, 9)
        torch.testing.assert_close(out['image'], images)
        rgb = FMoWTemporalDataModule(root=RGB, unlabeled=True)
        assert rgb.normalization == FMOW_RGB.normalization('unit')
