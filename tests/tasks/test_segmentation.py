from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from explora_geo.adapter import count_trainable_parameters
from explora_geo.models.feature_pyramid import SimpleFeaturePyramid, ViTFeatureMaps
from explora_geo.tasks.segmentation import SemanticSegmentationTask, ViTDPT, ViTUPerNet

TINY: dict[str, Any] = {'depth': 4, 'embed_dim': 32, 'num_heads': 2, 'img_size': 64}


def tiny_vit(**kwargs: Any) -> VisionTransformer:
    args = {**TINY, 'num_classes': 0, 'dynamic_img_size': True, 'dynamic_img_pad': True}
    model = timm.create_model('explora_vitb_dino', **{**args, **kwargs})
    assert isinstance(model, VisionTransformer)
    return model


def test_feature_maps_at_patch_stride_are_the_tokens() -> None:
    torch.manual_seed(0)
    vit = tiny_vit(patch_size=16).eval()
    maps = ViTFeatureMaps(vit, indices=[1, 3], stride=16)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, prefix = maps(x)
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for block in vit.blocks:
            tokens = block(tokens)
            outs.append(tokens)
    assert maps.indices == [1, 3] and maps.out_channels == [32, 32]
    for feature, prefix_tokens, out in zip(
        features, prefix, (outs[1], outs[3]), strict=True
    ):
        grid = out[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(feature, grid)
        assert prefix_tokens is not None
        torch.testing.assert_close(prefix_tokens, out[:, :1])


def test_feature_maps_resample_patch14_to_stride16() -> None:
    torch.manual_seed(0)
    vit = tiny_vit(img_size=224).eval()
    maps = ViTFeatureMaps(vit, indices=1, stride=16)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (feature,), _ = maps(x)
        grids = vit.forward_intermediates(x, indices=1, intermediates_only=True)
    assert isinstance(grids, list)
    (grid,) = grids
    assert grid.shape[-2:] == (16, 16)  # 224 / 14
    expected = F.interpolate(grid, size=(14, 14), mode='bilinear', align_corners=False)
    torch.testing.assert_close(feature, expected)


def test_simple_feature_pyramid_levels() -> None:
    x = torch.randn(2, 32, 8, 8)
    plain = SimpleFeaturePyramid(32)
    assert plain.out_channels == [8, 16, 32, 32]
    shapes = [tuple(level.shape) for level in plain([x])]
    assert shapes == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)]
    torch.testing.assert_close(plain([x])[2], x)  # scale 1 is the identity
    torch.testing.assert_close(plain([x])[3], F.max_pool2d(x, 2))
    projected = SimpleFeaturePyramid(32, out_channels=16)
    assert projected.out_channels == [16] * 4
    # One map per level is also accepted.
    levels = projected([x, x, x, x])
    assert [level.shape[1] for level in levels] == [16] * 4
    with pytest.raises(ValueError, match='expected 1 or 4 feature maps, got 2'):
        projected([x, x])
    with pytest.raises(ValueError, match='unsupported pyramid scale 3'):
        SimpleFeaturePyramid(32, scales=(3,))


@pytest.mark.parametrize('head', [ViTUPerNet, ViTDPT])
@pytest.mark.parametrize('size', [(64, 64), (96, 128)])
def test_heads_output_input_size(head: type, size: tuple[int, int]) -> None:
    model = head(tiny_vit(), num_classes=5, decoder_channels=16).eval()
    assert model.encoder.indices == [0, 1, 2, 3]  # smp's evenly spaced blocks
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 5, *size)


LORA = 4 * 2 * (8 * 32 + 32 * 8)  # 4 blocks, Q and V, rank 8, width 32


@pytest.mark.parametrize('model', ['upernet', 'dpt'])
@pytest.mark.parametrize(
    ('finetune', 'backbone'), [('lora', LORA), ('linear_probe', 0), ('full', None)]
)
def test_trainable_counts(model: str, finetune: str, backbone: int | None) -> None:
    task = SemanticSegmentationTask(
        model=model,  # type: ignore[arg-type]
        backbone='explora_vitb_dino',
        num_classes=3,
        finetune=finetune,  # type: ignore[arg-type]
        decoder_channels=16,
        model_kwargs=TINY,
    )
    vit = task.model.encoder.vit
    heads = sum(
        p.numel() for n, p in task.model.named_parameters() if 'encoder.' not in n
    )
    if backbone is None:
        backbone = sum(p.numel() for n, p in vit.named_parameters() if 'lora' not in n)
    assert count_trainable_parameters(vit) == backbone
    assert count_trainable_parameters(task) == backbone + heads


def test_freeze_decoder() -> None:
    task = SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        freeze_decoder=True,
        decoder_channels=16,
        model_kwargs=TINY,
    )
    assert count_trainable_parameters(task.model.decoder) == 0
    assert count_trainable_parameters(task.model.segmentation_head) > 0


def test_invalid_model() -> None:
    with pytest.raises(ValueError, match=r"model must be one of .*got 'unet'"):
        SemanticSegmentationTask(model='unet')  # type: ignore[arg-type]


def test_weights_from_export(tmp_path: Path) -> None:
    torch.manual_seed(4)
    source = timm.create_model('explora_vitb_dino', num_classes=0, **TINY)
    assert isinstance(source, VisionTransformer)
    path = tmp_path / 'last_encoder.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': 'explora_vitb_dino'},
            'state_dict': {f'model.{k}': v for k, v in source.state_dict().items()},
        },
        path,
    )
    task = SemanticSegmentationTask(
        backbone='tu-explora_vitb_dino',
        weights=str(path),
        num_classes=3,
        decoder_channels=16,
        model_kwargs=TINY,
    )
    loaded = task.model.encoder.vit.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


class RandomMasks(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        self.masks = torch.randint(0, 3, (n, 64, 64), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'image': self.images[i], 'mask': self.masks[i]}


@pytest.mark.parametrize('model', ['upernet', 'dpt'])
def test_fit(tmp_path: Path, model: str) -> None:
    torch.manual_seed(0)
    task = SemanticSegmentationTask(
        model=model,  # type: ignore[arg-type]
        backbone='explora_vitb_dino',
        num_classes=3,
        lr=0.01,
        decoder_channels=16,
        model_kwargs=TINY,
    )
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    # Batches of 2: UPerNet's pooling branch has BatchNorm on 1 x 1 maps.
    loader = DataLoader(RandomMasks(), batch_size=2)
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
    assert 'model.encoder.vit.blocks.3.attn.qkv.lora_B' in changed
    assert not changed & frozen
    predictions = trainer.predict(task, DataLoader(RandomMasks(2), batch_size=2))
    assert predictions is not None
    first = predictions[0]
    assert isinstance(first, dict)
    probabilities = first['probabilities']
    assert probabilities.shape == (2, 3, 64, 64)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, 64, 64))


def test_feature_maps_repeat_blocks_of_a_shallow_vit() -> None:
    vit = tiny_vit(depth=2).eval()
    model = ViTUPerNet(vit, num_classes=2, decoder_channels=16).eval()
    # smp's evenly spaced indices for 4 levels of 2 blocks.
    assert model.encoder.indices == [1, 0, 0, 1]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, _ = model.encoder(x)
        (first, last), _ = ViTFeatureMaps(vit, indices=[0, 1])(x)
    for got, want in zip(maps, (last, first, first, last), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('model', ['upernet', 'dpt'])
def test_load_from_checkpoint(tmp_path: Path, model: str) -> None:
    torch.manual_seed(0)
    task = SemanticSegmentationTask(
        model=model,  # type: ignore[arg-type]
        backbone='explora_vitb_dino',
        num_classes=3,
        decoder_channels=16,
        model_kwargs=TINY,
    )
    torch.nn.init.normal_(task.model.encoder.vit.blocks[0].attn.qkv.lora_B)
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator='cpu')
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / 'seg.ckpt')
    restored = SemanticSegmentationTask.load_from_checkpoint(
        tmp_path / 'seg.ckpt', weights_only=True
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), task.eval()(x))
