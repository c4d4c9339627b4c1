from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchgeo.tasks import Classification

from explora_geo.models import (
    ExPLoRAViTB14DINOv2Weights,
    ExPLoRAViTL14DINOv2Weights,
    ExPLoRAViTL16MAEWeights,
    ExPLoRAWeightsEnum,
    create_model,
    get_weight,
)
from explora_geo.models.weights import WEIGHT_ENUMS
from tests.data.checkpoints import layouts

NAMES = [
    'explora_vitb_dino',
    'explora_vitl_dino',
    'explora_vitg_dino',
    'explora_vitb_mae',
    'explora_vitl_mae',
]


@pytest.mark.parametrize(
    ('name', 'millions', 'patch', 'width', 'depth'),
    [
        ('explora_vitb_dino', 85.7, 14, 768, 12),
        ('explora_vitl_dino', 303.2, 14, 1024, 24),
        ('explora_vitg_dino', 1134.8, 14, 1536, 40),
        ('explora_vitb_mae', 85.8, 16, 768, 12),
        ('explora_vitl_mae', 303.3, 16, 1024, 24),
    ],
)
def test_registered_architectures(
    name: str, millions: float, patch: int, width: int, depth: int
) -> None:
    assert name in timm.list_models('explora_*')
    with torch.device('meta'):
        model = timm.create_model(name)
    assert isinstance(model, VisionTransformer)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
    assert model.patch_embed.patch_size == (patch, patch)
    assert model.embed_dim == width and len(model.blocks) == depth
    cfg = cast(dict[str, Any], model.pretrained_cfg)
    assert cfg['input_size'] == (3, 224, 224)
    assert cfg['url'].startswith('https://')
    assert model.num_classes == 0
    # DinoV2 models carry LayerScale, MAE ones do not.
    assert hasattr(model.get_submodule('blocks.0.ls1'), 'gamma') == name.endswith(
        'dino'
    )


def test_default_pretrained_tags() -> None:
    model = timm.create_model('explora_vitl_dino', pretrained=False, depth=1)
    assert cast(dict[str, Any], model.pretrained_cfg)['tag'] == 'fmow_rgb'
    assert 'explora_vitl_dino.lvd142m' in timm.list_pretrained('explora_vitl_dino*')


def test_meta_vitg_dinov2_layout_loads() -> None:
    # ViT-g's SwiGLU hidden width (4096) matches DinoV2's w12/w3 tensors.
    with torch.device('meta'):
        model = timm.create_model('explora_vitg_dino')
    assert model.get_parameter('blocks.0.mlp.fc1.weight').shape == (2 * 4096, 1536)
    assert model.get_parameter('blocks.0.mlp.fc2.weight').shape == (1536, 4096)


def test_kwargs(make_vit: Callable[..., nn.Module]) -> None:
    model = make_vit(in_chans=13, num_classes=7, img_size=42)
    out = model(torch.randn(2, 13, 42, 42))
    assert out.shape == (2, 7)
    assert isinstance(model, VisionTransformer)
    assert model.patch_embed.grid_size == (3, 3)


def test_forward_intermediates_and_features_only(
    make_vit: Callable[..., nn.Module],
) -> None:
    model = make_vit()
    assert isinstance(model, VisionTransformer)
    result = model.forward_intermediates(torch.randn(1, 3, 28, 28), indices=[0, 2])
    assert isinstance(result, tuple)
    _, inter = result
    assert [t.shape for t in inter] == [(1, 32, 2, 2)] * 2
    features = make_vit(features_only=True, out_indices=(1, 2))(
        torch.randn(1, 3, 28, 28)
    )
    assert [f.shape for f in features] == [(1, 32, 2, 2)] * 2


def test_gradient_checkpointing_same_gradients(
    make_vit: Callable[..., nn.Module],
) -> None:
    torch.manual_seed(0)
    model = make_vit()
    assert isinstance(model, VisionTransformer)
    x = torch.randn(2, 3, 28, 28)
    model(x).sum().backward()
    ref = [cast(Tensor, p.grad).clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, r in zip((p.grad for p in model.parameters()), ref, strict=True):
        torch.testing.assert_close(g, r)


def test_timm_pretrained_file_uses_converter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = layouts.dinov2(grid=37)
    path = tmp_path / 'dinov2_vitb14_pretrain.pth'
    torch.save(sd, path)
    model = timm.create_model(
        'explora_vitb_dino',
        pretrained=True,
        pretrained_cfg_overlay={'file': str(path)},
        depth=3,
        embed_dim=32,
        num_heads=2,
        num_classes=4,
    )
    torch.testing.assert_close(
        model.get_parameter('blocks.0.attn.qkv.weight').detach(),
        sd['blocks.0.attn.qkv.weight'],
    )
    assert model.pos_embed.shape == (1, 257, 32)


def test_weights_enums() -> None:
    from explora_geo.models import ExPLoRAViTL8SatMAEGroupWeights

    assert len(WEIGHT_ENUMS) == 6 and ExPLoRAViTL8SatMAEGroupWeights in WEIGHT_ENUMS
    for enum in WEIGHT_ENUMS:
        for member in enum:
            assert member.value.url.startswith('https://')
            assert member.value.meta['model'] in [*NAMES, 'explora_vitl_satmae_group']
            assert get_weight(str(member)) is member
    assert (
        'huggingface.co/samarkhanna/ExPLoRA'
        in ExPLoRAViTL14DINOv2Weights.FMOW_RGB.value.url
    )
    assert ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL.value.url.endswith(
        'mae_visualize_vit_large.pth'
    )
    with pytest.raises(ValueError, match='neither a file nor known weights'):
        get_weight('NoSuchWeights.X')


def test_weights_get_state_dict_converts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    encoder = layouts.dinov2(grid=4)
    encoder.pop('mask_token')
    src = tmp_path / 'explora_dinov2_vit_base_fmow_rgb.pth'
    torch.save(layouts.explora_teacher(encoder), src)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    from torchvision.models._api import Weights

    class LocalWeights(ExPLoRAWeightsEnum):
        FMOW_RGB = Weights(
            url=src.as_uri(), transforms=None, meta={'model': 'explora_vitb_dino'}
        )

    sd = LocalWeights.FMOW_RGB.get_state_dict(progress=False)
    assert set(sd) == set(encoder)
    torch.testing.assert_close(
        sd['blocks.2.attn.qkv.weight'], encoder['blocks.2.attn.qkv.weight']
    )


def test_create_model_with_enum(
    monkeypatch: pytest.MonkeyPatch, make_vit: Callable[..., nn.Module]
) -> None:
    encoder = layouts.dinov2(grid=2)
    monkeypatch.setattr(
        ExPLoRAWeightsEnum, 'get_state_dict', lambda self, *a, **k: encoder
    )
    model = create_model(
        'explora_vitb_dino',
        weights=ExPLoRAViTB14DINOv2Weights.FMOW_RGB,
        depth=3,
        embed_dim=32,
        num_heads=2,
        img_size=28,
    )
    torch.testing.assert_close(
        model.get_parameter('norm.weight').detach(), encoder['norm.weight']
    )


def test_torchgeo_classification_loads_exported_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model('explora_vitb_dino', num_classes=0)
    path = tmp_path / 'encoder.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': 'explora_vitb_dino'},
            'state_dict': {f'model.{k}': v for k, v in source.state_dict().items()},
        },
        path,
    )
    # torchgeo's own task, registered name, our checkpoint by path.
    task = Classification(
        model='explora_vitb_dino', weights=str(path), num_classes=5, in_channels=3
    )
    assert task.model.num_classes == 5
    for key in ('cls_token', 'pos_embed', 'blocks.11.attn.qkv.weight', 'norm.bias'):
        torch.testing.assert_close(
            task.model.state_dict()[key], source.state_dict()[key]
        )


def test_torchgeo_classification_by_name() -> None:
    task = Classification(model='explora_vitb_mae', num_classes=3, in_channels=4)
    out = task(torch.randn(1, 4, 224, 224))
    assert out.shape == (1, 3)


def test_torchgeo_semantic_segmentation_dpt_timm_universal_encoder() -> None:
    from torchgeo.tasks import SemanticSegmentation

    # smp's DPT decoder needs a power-of-two patch size (MAE ViTs, patch 16);
    # for the patch-14 DinoV2 ViTs use explora_geo.tasks.SemanticSegmentationTask.
    task = SemanticSegmentation(
        model='dpt', backbone='tu-explora_vitb_mae', num_classes=3, in_channels=3
    )
    with torch.no_grad():
        out = task(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 3, 224, 224)
