from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from lightning.pytorch import Trainer
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from explora_geo.adapter import count_trainable_parameters
from explora_geo.tasks.detection import ObjectDetectionTask, ViTDetBackbone

TINY: dict[str, Any] = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 64}
SMALL: dict[str, Any] = {'fpn_channels': 16, 'anchor_sizes': (8, 16, 32, 64, 128)}


def test_backbone_levels_and_strides() -> None:
    vit = timm.create_model(
        'explora_vitb_dino',
        num_classes=0,
        dynamic_img_size=True,
        dynamic_img_pad=True,
        **TINY,
    )
    assert isinstance(vit, VisionTransformer)
    backbone = ViTDetBackbone(vit, out_channels=16)
    assert backbone.out_channels == 16
    assert backbone.body.indices == [1]  # ViTDet: the last block
    for size in (64, 128):
        levels = backbone(torch.randn(1, 3, size, size))
        assert list(levels) == ['0', '1', '2', '3', 'pool']
        strides = [size // v.shape[-1] for v in levels.values()]
        assert strides == [4, 8, 16, 32, 64]
        assert {v.shape[1] for v in levels.values()} == {16}


@pytest.mark.parametrize(
    ('finetune', 'backbone'),
    [('lora', 2 * 2 * (8 * 32 + 32 * 8)), ('linear_probe', 0), ('full', None)],
)
def test_trainable_counts(finetune: str, backbone: int | None) -> None:
    task = ObjectDetectionTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        finetune=finetune,  # type: ignore[arg-type]
        model_kwargs=TINY,
        **SMALL,
    )
    vit = task.model.backbone.body.vit
    rest = sum(p.numel() for n, p in task.model.named_parameters() if '.vit.' not in n)
    if backbone is None:
        backbone = sum(p.numel() for p in vit.parameters())
    assert count_trainable_parameters(vit) == backbone
    assert count_trainable_parameters(task) == backbone + rest


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="model must be 'faster-rcnn'.*'fcos'"):
        ObjectDetectionTask(model='fcos')  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r'anchor_sizes needs one size per .*\(32, 64\)'
    ):
        ObjectDetectionTask(anchor_sizes=(32, 64))


class RandomBoxes(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        corners = torch.randint(0, 40, (n, 3, 2), generator=g).float()
        sizes = torch.randint(6, 24, (n, 3, 2), generator=g).float()
        self.boxes = torch.cat([corners, corners + sizes], dim=-1)
        self.labels = torch.randint(1, 3, (n, 3), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            'image': self.images[i],
            'bbox_xyxy': self.boxes[i],
            'label': self.labels[i],
        }


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    return {
        'image': torch.stack([s['image'] for s in samples]),
        'bbox_xyxy': [s['bbox_xyxy'] for s in samples],
        'label': [s['label'] for s in samples],
    }


def test_fit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = ObjectDetectionTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        lr=0.01,
        model_kwargs=TINY,
        **SMALL,
    )
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    loader = DataLoader(RandomBoxes(), batch_size=2, collate_fn=collate)
    trainer = Trainer(
        fast_dev_run=True,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, loader, loader)
    changed = {
        n for n, p in task.named_parameters() if not torch.equal(p.detach(), before[n])
    }
    frozen = {n for n, p in task.named_parameters() if not p.requires_grad}
    assert 'model.backbone.body.vit.blocks.1.attn.qkv.lora_B' in changed
    assert 'model.backbone.fpn.levels.0.0.weight' in changed
    assert not changed & frozen
    assert 'val_map' in trainer.callback_metrics
    predictions = trainer.predict(task, loader)
    assert predictions is not None
    assert set(predictions[0][0]) == {'boxes', 'labels', 'scores'}


def test_load_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = ObjectDetectionTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        model_kwargs=TINY,
        **SMALL,
    )
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator='cpu')
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / 'det.ckpt')
    restored = ObjectDetectionTask.load_from_checkpoint(
        tmp_path / 'det.ckpt', weights_only=True
    )
    x = torch.randn(1, 3, 64, 64)
    task.eval()
    restored.eval()
    with torch.no_grad():
        levels = task.model.backbone(x)
        for name, level in restored.model.backbone(x).items():
            torch.testing.assert_close(level, levels[name])
