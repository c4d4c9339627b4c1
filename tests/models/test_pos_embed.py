"""Position tables are resampled by each source's own rule, at load and at run time."""

import math
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from explora_geo.models import (
    GroupChannelViT,
    TemporalViT,
    create_model,
    load_checkpoint,
)
from explora_geo.models.pos_embed import resample_pos_embed
from tests.data.checkpoints import layouts

TINY_DINO: dict[str, Any] = {
    'depth': 3,
    'embed_dim': 32,
    'num_heads': 2,
    'num_classes': 0,
}


def cubic(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (PyTorch's bicubic uses a = -0.75)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_matrix(n_in: int, n_out: int, scale: float) -> Tensor:
    """``(n_out, n_in)`` weights of 1D bicubic resampling, half-pixel centres.

    Output sample i sits at input coordinate ``(i + 0.5) / scale - 0.5``; the
    four taps around it are clamped to the border.
    """
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) / scale - 0.5
        x0 = math.floor(x)
        t = x - x0
        for k in range(-1, 3):
            w[i, min(max(x0 + k, 0), n_in - 1)] += cubic(k - t)
    return w


def by_formula(table: Tensor, old: int, new: int, scale: float) -> Tensor:
    """Resample the grid rows of a ``(1, 1 + old**2, D)`` table with the 1D weights."""
    grid = table[0, 1:].double().reshape(old, old, -1)
    w = bicubic_matrix(old, new, scale)
    out = torch.einsum('ih,hwd,jw->ijd', w, grid, w).reshape(1, new * new, -1)
    return torch.cat([table[:, :1].double(), out], dim=1).float()


def dinov2_interpolate_pos_encoding(
    pos_embed: Tensor, w: int, h: int, patch_size: int
) -> Tensor:
    """DinoV2's ``DinoVisionTransformer.interpolate_pos_encoding``, written out
    (``interpolate_offset=0.1``, ``interpolate_antialias=False``)."""
    n = pos_embed.shape[1] - 1
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size, h // patch_size
    m = int(math.sqrt(n))
    assert n == m * m
    sx, sy = float(w0 + 0.1) / m, float(h0 + 0.1) / m
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2),
        mode='bicubic',
        antialias=False,
        scale_factor=(sx, sy),
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def satmae_interpolate_pos_embed(pos_embed: Tensor, new_size: int) -> Tensor:
    """SatMAE's (and MAE's) ``util/pos_embed.interpolate_pos_embed``, written out."""
    embedding_size = pos_embed.shape[-1]
    orig_size = int((pos_embed.shape[-2] - 1) ** 0.5)
    extra_tokens = pos_embed[:, :1]
    pos_tokens = pos_embed[:, 1:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size)
    pos_tokens = F.interpolate(
        pos_tokens.permute(0, 3, 1, 2),
        size=(new_size, new_size),
        mode='bicubic',
        align_corners=False,
    )
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


# ------------------------------------------------------------------ the rules


@pytest.mark.parametrize('new', [16, 7])
def test_dinov2_rule_is_bicubic_with_offset_scale(new: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 37 * 37, 8)
    out = resample_pos_embed(table, new, rule='dinov2')
    assert out.shape == (1, 1 + new * new, 8)
    expected = by_formula(table, 37, new, (new + 0.1) / 37)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # The offset moves the samples: plain size-based bicubic differs.
    plain = by_formula(table, 37, new, new / 37)
    assert (out - plain).abs().max() > 1e-2


@pytest.mark.parametrize('new', [8, 16])
def test_mae_rule_is_bicubic_to_size(new: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 12 * 12, 8)
    out = resample_pos_embed(table, new, rule='mae')
    torch.testing.assert_close(
        out, by_formula(table, 12, new, new / 12), atol=1e-5, rtol=0
    )
    assert torch.equal(out[:, 0], table[:, 0])


@pytest.mark.parametrize('new', [8, 16])
def test_timm_rule_on_request(new: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 12 * 12, 8)
    out = resample_pos_embed(table, new, rule='timm')
    torch.testing.assert_close(
        out, timm.layers.resample_abs_pos_embed(table, [new, new], num_prefix_tokens=1)
    )
    # timm's antialiased filter is another kernel, also when upsampling.
    assert (out - resample_pos_embed(table, new, rule='mae')).abs().max() > 1e-2


def test_dinov2_rule_in_float32_keeps_dtype() -> None:
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 37 * 37, 8)
    out = resample_pos_embed(table.to(torch.bfloat16), 16, rule='dinov2')
    assert out.dtype == torch.bfloat16
    expected = dinov2_interpolate_pos_encoding(table.to(torch.bfloat16), 224, 224, 14)
    torch.testing.assert_close(out, expected.to(torch.bfloat16), atol=0, rtol=0)


def test_same_grid_and_errors() -> None:
    table = torch.randn(1, 17, 4)
    assert resample_pos_embed(table, 4, rule='dinov2') is table
    with pytest.raises(ValueError, match=r"unknown position-table resampling 'area'"):
        resample_pos_embed(table, 3, rule='area')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r'16 grid rows does not hold a 3x3 grid'):
        resample_pos_embed(table, 2, old_size=3)


# -------------------------------------------------------- DinoV2 at load and run


def vit(name: str, **kwargs: Any) -> VisionTransformer:
    """:func:`create_model`, checked to build a timm ViT."""
    model = create_model(name, **kwargs)
    assert isinstance(model, VisionTransformer)
    return model


@pytest.fixture
def dinov2_checkpoint(tmp_path: Path) -> tuple[dict[str, Tensor], str]:
    torch.manual_seed(0)
    sd = layouts.dinov2(d=32, depth=3, grid=37)
    path = tmp_path / 'dinov2_vitb14_pretrain.pth'
    torch.save(sd, path)
    return sd, str(path)


@pytest.mark.parametrize('img_size', [224, 98])
def test_dinov2_weights_equal_dinov2_interpolation(
    dinov2_checkpoint: tuple[dict[str, Tensor], str], img_size: int
) -> None:
    sd, path = dinov2_checkpoint
    model = vit('explora_vitb_dino', weights=path, img_size=img_size, **TINY_DINO)
    expected = dinov2_interpolate_pos_encoding(sd['pos_embed'], img_size, img_size, 14)
    assert (model.get_parameter('pos_embed').detach() - expected).abs().max() <= 1e-5


def test_dinov2_dynamic_size_equals_loading_at_that_size(
    dinov2_checkpoint: tuple[dict[str, Tensor], str],
) -> None:
    _, path = dinov2_checkpoint
    # The hub model: 518 px table, interpolated at every forward pass.
    hub_like = vit(
        'explora_vitb_dino',
        weights=path,
        img_size=518,
        dynamic_img_size=True,
        **TINY_DINO,
    ).eval()
    at_224 = vit('explora_vitb_dino', weights=path, img_size=224, **TINY_DINO).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (hub_like.forward_features(x) - at_224.forward_features(x)).abs().max()
    assert diff <= 1e-5


def test_dinov2_local_crops_resample_at_run_time(
    dinov2_checkpoint: tuple[dict[str, Tensor], str],
) -> None:
    _, path = dinov2_checkpoint
    model = vit(
        'explora_vitb_dino',
        weights=path,
        img_size=224,
        dynamic_img_size=True,
        **TINY_DINO,
    )
    patches = model.patch_embed(torch.randn(2, 3, 98, 98))
    assert patches.shape == (2, 7, 7, 32)
    table = dinov2_interpolate_pos_encoding(
        model.get_parameter('pos_embed').detach(), 98, 98, 14
    )
    expected = torch.cat(
        [model.get_parameter('cls_token').expand(2, -1, -1), patches.flatten(1, 2)], 1
    )
    torch.testing.assert_close(model._pos_embed(patches), expected + table)


def test_dinov2_set_input_size_and_timm_option(
    dinov2_checkpoint: tuple[dict[str, Tensor], str],
) -> None:
    sd, path = dinov2_checkpoint
    model = vit('explora_vitb_dino', weights=path, img_size=518, **TINY_DINO)
    model.set_input_size(img_size=(224, 224))
    expected = dinov2_interpolate_pos_encoding(sd['pos_embed'], 224, 224, 14)
    assert (model.get_parameter('pos_embed').detach() - expected).abs().max() <= 1e-5
    timm_model = vit(
        'explora_vitb_dino',
        weights=path,
        img_size=224,
        pos_embed_resample='timm',
        **TINY_DINO,
    )
    torch.testing.assert_close(
        timm_model.get_parameter('pos_embed').detach(),
        timm.layers.resample_abs_pos_embed(sd['pos_embed'], [16, 16]),
    )
    with pytest.raises(ValueError, match="unknown position-table resampling 'x'"):
        create_model('explora_vitb_dino', pos_embed_resample='x', **TINY_DINO)


def test_mae_encoder_uses_mae_rule(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = layouts.mae(d=32, depth=3, grid=14, patch=16, decoder=False)
    path = tmp_path / 'mae_pretrain_vit_base.pth'
    torch.save(ckpt, path)
    for img_size in (128, 256):
        model = vit('explora_vitb_mae', weights=path, img_size=img_size, **TINY_DINO)
        expected = satmae_interpolate_pos_embed(
            ckpt['model']['pos_embed'], img_size // 16
        )
        assert (
            model.get_parameter('pos_embed').detach() - expected
        ).abs().max() <= 1e-5


# ------------------------------------------------ SatMAE group-channel, temporal


@pytest.mark.parametrize('img_size', [64, 128])
def test_satmae_group_grids_equal_satmae_interpolation(img_size: int) -> None:
    torch.manual_seed(0)
    args: dict[str, Any] = {
        'patch_size': 8,
        'embed_dim': 64,
        'depth': 2,
        'num_heads': 2,
    }
    args['channel_embed_dim'] = 16
    source = timm.create_model('explora_vitb_satmae_group', img_size=96, **args)
    checkpoint = dict(source.state_dict())  # SatMAE's keys, 12 x 12 grid
    checkpoint['pos_embed'] = torch.randn(1, 1 + 12 * 12, 48)
    model = timm.create_model('explora_vitb_satmae_group', img_size=img_size, **args)
    assert isinstance(model, GroupChannelViT)
    load_checkpoint(model, {'model': checkpoint})
    expected = satmae_interpolate_pos_embed(checkpoint['pos_embed'], img_size // 8)
    assert (model.pos_embed.detach() - expected).abs().max() <= 1e-4


@pytest.mark.parametrize('img_size', [64, 128])
def test_satmae_temporal_grids_equal_satmae_interpolation(img_size: int) -> None:
    torch.manual_seed(0)
    args: dict[str, Any] = {
        'patch_size': 8,
        'embed_dim': 64,
        'depth': 2,
        'num_heads': 2,
    }
    args['time_embed_dim'] = 8
    source = timm.create_model('explora_vitl_satmae_temporal', img_size=96, **args)
    checkpoint = dict(source.state_dict())
    checkpoint['pos_embed'] = torch.randn(1, 1 + 12 * 12, 40)
    model = timm.create_model('explora_vitl_satmae_temporal', img_size=img_size, **args)
    assert isinstance(model, TemporalViT)
    load_checkpoint(model, {'model': checkpoint})
    expected = satmae_interpolate_pos_embed(checkpoint['pos_embed'], img_size // 8)
    assert (model.pos_embed.detach() - expected).abs().max() <= 1e-4


def test_satmae_timm_option() -> None:
    torch.manual_seed(0)
    args: dict[str, Any] = {
        'patch_size': 8,
        'embed_dim': 64,
        'depth': 1,
        'num_heads': 2,
    }
    args['channel_embed_dim'] = 16
    checkpoint = dict(
        timm.create_model('explora_vitb_satmae_group', img_size=96, **args).state_dict()
    )
    checkpoint['pos_embed'] = torch.randn(1, 1 + 12 * 12, 48)
    model = timm.create_model(
        'explora_vitb_satmae_group', img_size=64, pos_embed_resample='timm', **args
    )
    assert isinstance(model, GroupChannelViT)
    load_checkpoint(model, checkpoint)
    torch.testing.assert_close(
        model.pos_embed.detach(),
        timm.layers.resample_abs_pos_embed(checkpoint['pos_embed'], [8, 8]),
    )
