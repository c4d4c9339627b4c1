"""GlobalWheat datamodule on real imagery: NEON tree crowns in the GlobalWheat layout."""

from pathlib import Path
from typing import Any

import kornia.augmentation as K
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torchgeo.tasks import ObjectDetection

from explora_geo.datamodules.globalwheat import GlobalWheatDataModule
from explora_geo.datasets.globalwheat import GlobalWheat

REAL = Path(__file__).parents[1] / 'data' / 'globalwheat_real'


def test_batches_keep_variable_box_lists() -> None:
    dm = GlobalWheatDataModule(batch_size=2, image_size=100, root=REAL)
    dm.setup('fit')
    batch = next(iter(dm.val_dataloader()))
    dataset = GlobalWheat(REAL, split='val')
    assert batch['image'].shape == (1, 3, 100, 100)
    assert isinstance(batch['bbox_xyxy'], list) and isinstance(batch['label'], list)
    assert torch.equal(batch['bbox_xyxy'][0], dataset[0]['bbox_xyxy'])
    batch = next(iter(dm.train_dataloader()))
    counts = sorted(len(b) for b in batch['bbox_xyxy'])
    train = GlobalWheat(REAL, split='train')
    assert counts == sorted(len(train[i]['bbox_xyxy']) for i in range(len(train)))
    assert [len(label) for label in batch['label']] == [
        len(b) for b in batch['bbox_xyxy']
    ]
    assert all(label.dtype == torch.long for label in batch['label'])


def test_resize_scales_boxes() -> None:
    dm = GlobalWheatDataModule(batch_size=1, image_size=50, root=REAL)
    dm.setup('validate')
    assert dm.val_dataset is not None
    sample = dm.val_dataset[0]
    original = GlobalWheat(REAL, split='val')[0]['bbox_xyxy']
    assert sample['image'].shape == (3, 50, 50)
    # kornia's convention: pixel-index coordinates, scaled by (50 - 1) / (100 - 1)
    torch.testing.assert_close(sample['bbox_xyxy'], original * 49 / 99)


def test_flips_keep_boxes_on_their_crowns() -> None:
    dm = GlobalWheatDataModule(batch_size=2, image_size=100, root=REAL)
    assert isinstance(dm.train_aug, nn.Module)
    for module in dm.train_aug.children():
        if isinstance(module, (K.RandomHorizontalFlip, K.RandomVerticalFlip)):
            module.p = 1.0
    dataset = GlobalWheat(REAL, split='train')
    samples = [dataset[0], dataset[1]]
    batch: dict[str, Any] = {
        'image': torch.stack([s['image'] for s in samples]),
        'bbox_xyxy': [s['bbox_xyxy'] for s in samples],
        'label': [s['label'] for s in samples],
    }
    out = dm.train_aug(batch)
    normalized = (batch['image'] - dm.mean.view(1, 3, 1, 1)) / dm.std.view(1, 3, 1, 1)
    torch.testing.assert_close(out['image'], normalized.flip(-1, -2))
    for boxes, flipped, image, image_flipped in zip(
        batch['bbox_xyxy'], out['bbox_xyxy'], normalized, out['image'], strict=True
    ):
        x1, y1, x2, y2 = boxes.unbind(-1)
        expected = torch.stack([99 - x2, 99 - y2, 99 - x1, 99 - y1], dim=-1)
        torch.testing.assert_close(flipped, expected)
        # The pixels a box covers (inclusive pixel indices) are the same crown
        # before and after the flip.
        for box, box_flipped in zip(
            boxes.int().tolist(), flipped.int().tolist(), strict=True
        ):
            if max(box) > 99:
                continue
            a = image[:, box[1] : box[3] + 1, box[0] : box[2] + 1]
            b = image_flipped[
                :,
                box_flipped[1] : box_flipped[3] + 1,
                box_flipped[0] : box_flipped[2] + 1,
            ]
            torch.testing.assert_close(a.mean(dim=(1, 2)), b.mean(dim=(1, 2)))


def test_unlabeled_mode() -> None:
    dm = GlobalWheatDataModule(batch_size=2, image_size=32, root=REAL, unlabeled=True)
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {'image'}
    assert batch['image'].shape == (2, 3, 32, 32)


@pytest.mark.slow
def test_object_detection_fit(tmp_path: Path) -> None:
    """torchgeo's ObjectDetection trains and validates on these batches."""
    dm = GlobalWheatDataModule(batch_size=2, image_size=64, root=REAL)
    task = ObjectDetection(
        model='faster-rcnn',
        backbone='resnet18',
        weights=None,
        num_classes=2,
        trainable_layers=5,
    )
    trainer = Trainer(
        fast_dev_run=True, accelerator='cpu', default_root_dir=tmp_path, logger=False
    )
    trainer.fit(task, datamodule=dm)
    assert trainer.state.finished
    assert torch.isfinite(trainer.callback_metrics['loss_classifier'])
