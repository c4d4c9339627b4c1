import math
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import timm
import torch
from lightning.pytorch import Trainer
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from explora_geo.adapter import QKVLoRA, count_trainable_parameters
from explora_geo.tasks.classification import (
    ClassificationTask,
    configure_finetune,
    probe_features,
)
from tests.tasks.optim_config import optimizer_config

TINY: dict[str, Any] = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 28}


def vitl14_count(num_classes: int) -> int:
    """Parameters of DinoV2 ViT-L/14 at 224 px with a linear head, from its shapes."""
    d, depth, patch, tokens = 1024, 24, 14, (224 // 14) ** 2 + 1
    embed = d * 3 * patch * patch + d + d + tokens * d  # patch embed, cls, pos
    block = (
        4 * d  # norm1, norm2
        + 3 * d * d
        + 3 * d  # qkv
        + d * d
        + d  # proj
        + 2 * d  # LayerScale
        + 4 * d * d
        + 4 * d  # fc1
        + 4 * d * d
        + d  # fc2
    )
    return embed + depth * block + 2 * d + d * num_classes + num_classes


LORA_R8_VITL = 24 * 2 * (8 * 1024 + 1024 * 8)  # 786,432: LoRA on Q and V


@pytest.mark.parametrize(
    ('finetune', 'pooling', 'blocks', 'head_in', 'backbone'),
    [
        ('lora', None, 1, 1024, LORA_R8_VITL),
        ('linear_probe', 'token', 1, 1024, 0),
        ('linear_probe', 'token+avg', 4, 5 * 1024, 0),
        ('full', None, 1, 1024, vitl14_count(62) - (1024 * 62 + 62)),
    ],
)
def test_trainable_counts_vitl(
    finetune: str, pooling: str | None, blocks: int, head_in: int, backbone: int
) -> None:
    with torch.device('meta'):
        task = ClassificationTask(
            model='explora_vitl_dino',
            num_classes=62,
            finetune=finetune,  # type: ignore[arg-type]
            pooling=pooling,  # type: ignore[arg-type]
            pooled_blocks=blocks,
        )
    assert LORA_R8_VITL == 786_432  # the paper's 0.8M
    assert task.model.head.in_features == head_in
    assert count_trainable_parameters(task) == backbone + head_in * 62 + 62


def test_lora_trains_only_factors_and_head() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino', num_classes=4, model_kwargs=TINY
    )
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    expected = {f'blocks.{i}.attn.qkv.lora_{f}' for i in range(2) for f in 'AB'}
    assert trainable == expected | {'head.weight', 'head.bias'}
    layer = task.model.blocks[0].attn.qkv
    assert isinstance(layer, QKVLoRA)
    assert layer.targets == ('q', 'v') and layer.rank == 8 and layer.scaling == 1.0


def test_freeze_backbone_means_linear_probe() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=4,
        freeze_backbone=True,
        model_kwargs=TINY,
    )
    assert task.finetune == 'linear_probe'
    assert count_trainable_parameters(task) == 32 * 4 + 4


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="finetune must be one of.*'bitfit'"):
        ClassificationTask(finetune='bitfit')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling must be None or one of.*'max'"):
        ClassificationTask(pooling='max')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling='avg', pooled_blocks=4"):
        ClassificationTask(pooling='avg', pooled_blocks=4)
    with pytest.raises(ValueError, match='pooling=None, pooled_blocks=2'):
        ClassificationTask(pooled_blocks=2)
    with pytest.raises(ValueError, match="finetune must be one of.*'half'"):
        configure_finetune(torch.nn.Linear(2, 2), 'half')


def manual_tokens(vit: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output passed through the final norm, computed step by step."""
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    outputs = []
    for block in vit.blocks:
        h = block(h)
        outputs.append(vit.norm(h))
    return outputs


def test_probe_features_match_dinov2_definition() -> None:
    torch.manual_seed(0)
    vit = timm.create_model('explora_vitb_dino', num_classes=0, **{**TINY, 'depth': 3})
    assert isinstance(vit, VisionTransformer)
    vit.eval()
    x = torch.randn(2, 3, 28, 28)
    tokens = manual_tokens(vit, x)
    with torch.no_grad():
        # One block, class token: exactly timm's pre-logits.
        timm_pooled = vit.forward_head(vit.forward_features(x), pre_logits=True)
        torch.testing.assert_close(probe_features(vit, x), timm_pooled)
        torch.testing.assert_close(probe_features(vit, x), tokens[-1][:, 0])
        # Class tokens of the last two blocks, then the last block's mean patch token.
        expected = torch.cat(
            [tokens[1][:, 0], tokens[2][:, 0], tokens[2][:, 1:].mean(1)], dim=-1
        )
        torch.testing.assert_close(probe_features(vit, x, 2, 'token+avg'), expected)
        torch.testing.assert_close(
            probe_features(vit, x, 1, 'avg'), tokens[2][:, 1:].mean(1)
        )


def test_pooled_head_forward_uses_probe_features() -> None:
    torch.manual_seed(0)
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        pooling='token+avg',
        pooled_blocks=2,
        model_kwargs=TINY,
    )
    assert task.model.head.in_features == 3 * 32
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = task.model.head(probe_features(task.model, x, 2, 'token+avg'))
        torch.testing.assert_close(task(x), expected)


def test_linear_probe_keeps_backbone_in_eval_mode() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        finetune='linear_probe',
        model_kwargs={**TINY, 'drop_path_rate': 0.5},
    )
    task.train()
    assert not task.model.blocks[0].training and task.model.head.training
    x = torch.randn(2, 3, 28, 28)
    # Drop path is off in eval mode, so the output is deterministic.
    torch.testing.assert_close(task(x), task(x))
    task(x).sum().backward()
    assert task.model.head.weight.grad is not None
    assert all(
        p.grad is None for n, p in task.model.named_parameters() if 'head' not in n
    )


def export_layout(vit: torch.nn.Module, path: Path, name: str) -> Path:
    """An ExPLoRA pre-training export: TorchGeo's `weights=<path>` layout."""
    torch.save(
        {
            'hyper_parameters': {'model': name, 'in_chans': 3},
            'state_dict': {f'model.{k}': v for k, v in vit.state_dict().items()},
        },
        path,
    )
    return path


@pytest.mark.parametrize('finetune', ['lora', 'full'])
def test_weights_from_export(tmp_path: Path, finetune: str) -> None:
    torch.manual_seed(1)
    source = timm.create_model('explora_vitb_dino', num_classes=0, **TINY)
    assert isinstance(source, VisionTransformer)
    path = export_layout(source, tmp_path / 'last_encoder.ckpt', 'explora_vitb_dino')
    task = ClassificationTask(
        model='explora_vitb_dino',
        weights=str(path),
        num_classes=5,
        finetune=finetune,  # type: ignore[arg-type]
        model_kwargs=TINY,
    )
    loaded = task.model.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    # LoRA starts at zero: the task computes the loaded network plus its new head.
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = task.model.head(source.eval()(x))
        torch.testing.assert_close(task.eval()(x), expected)


def test_weights_adapt_input_channels(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = timm.create_model('explora_vitb_dino', num_classes=0, **TINY)
    assert isinstance(source, VisionTransformer)
    path = export_layout(source, tmp_path / 'enc.ckpt', 'explora_vitb_dino')
    task = ClassificationTask(
        model='explora_vitb_dino',
        weights=str(path),
        in_channels=6,
        num_classes=2,
        model_kwargs=TINY,
    )
    # timm's adapt_input_conv: RGB filters repeated, scaled by 3 / in_chans.
    rgb = source.patch_embed.proj.weight
    expected = torch.cat([rgb, rgb], dim=1) * (3 / 6)
    torch.testing.assert_close(task.model.patch_embed.proj.weight, expected)


def test_weights_from_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = timm.create_model('explora_vitb_dino', num_classes=0, **TINY)
    assert isinstance(source, VisionTransformer)
    path = tmp_path / 'encoder.safetensors'
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(path)
    )
    task = ClassificationTask(
        model='explora_vitb_dino',
        weights=str(path),
        num_classes=2,
        finetune='linear_probe',
        model_kwargs=TINY,
    )
    torch.testing.assert_close(
        task.model.get_parameter('blocks.1.mlp.fc2.weight'),
        source.get_parameter('blocks.1.mlp.fc2.weight'),
    )


def test_weights_mismatch_names_file_and_keys(tmp_path: Path) -> None:
    deeper = timm.create_model(
        'explora_vitb_dino', num_classes=0, **{**TINY, 'depth': 3}
    )
    assert isinstance(deeper, VisionTransformer)
    path = export_layout(deeper, tmp_path / 'deep.ckpt', 'explora_vitb_dino')
    with pytest.raises(KeyError, match=r'deep\.ckpt.*unexpected keys: \[.blocks\.2\.'):
        ClassificationTask(
            model='explora_vitb_dino',
            weights=str(path),
            num_classes=2,
            model_kwargs=TINY,
        )


class RandomImages(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 8, classes: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 28, 28, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'image': self.images[i], 'label': self.labels[i]}


@pytest.mark.parametrize(
    ('finetune', 'pooling'), [('lora', None), ('linear_probe', 'token+avg')]
)
def test_fit_updates_only_trainable(
    tmp_path: Path, finetune: str, pooling: str | None
) -> None:
    torch.manual_seed(0)
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        finetune=finetune,  # type: ignore[arg-type]
        pooling=pooling,  # type: ignore[arg-type]
        pooled_blocks=2 if pooling else 1,
        lr=0.1,
        model_kwargs=TINY,
    )
    optimizer = optimizer_config(task)['optimizer']
    params = [p for g in optimizer.param_groups for p in g['params']]
    assert sum(p.numel() for p in params) == count_trainable_parameters(task)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    loader = DataLoader(RandomImages(), batch_size=4)
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
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert 'model.head.weight' in changed
    if finetune == 'lora':
        # B starts at zero; one step makes it non-zero.
        assert 'model.blocks.0.attn.qkv.lora_B' in changed
    assert math.isfinite(float(trainer.callback_metrics['train_loss']))
    # The hyperparameters rebuild the same network, LoRA factors included.
    trainer.save_checkpoint(tmp_path / 'task.ckpt')
    restored = ClassificationTask.load_from_checkpoint(
        tmp_path / 'task.ckpt', weights_only=True
    )
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), task.eval()(x))


def test_probe_features_normalise_after_pooling_for_fc_norm_models() -> None:
    # An average-pooling ViT keeps its final LayerNorm as fc_norm, after pooling.
    torch.manual_seed(0)
    vit = timm.create_model(
        'explora_vitb_mae', num_classes=0, global_pool='avg', **{**TINY, 'img_size': 32}
    ).eval()
    assert isinstance(vit, VisionTransformer)
    assert isinstance(vit.norm, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        timm_pooled = vit.forward_head(vit.forward_features(x), pre_logits=True)
        torch.testing.assert_close(probe_features(vit, x, 1, 'avg'), timm_pooled)
