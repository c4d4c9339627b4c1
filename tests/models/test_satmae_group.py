import math
from typing import Any, cast

import pytest
import timm
import torch
from timm.layers import PatchEmbed
from timm.models import FeatureInfo
from torch import nn
from torchgeo.tasks import Classification
from torchgeo.tasks.utils import load_state_dict as torchgeo_load_state_dict

from explora_geo.models import (
    SATMAE_BANDS,
    SATMAE_GROUPS,
    SENTINEL2_BANDS,
    ExPLoRAViTL8SatMAEGroupWeights,
    GroupChannelMAE,
    GroupChannelViT,
    GroupPatchEmbed,
)
from explora_geo.models.mae import create_mae
from explora_geo.models.pos_embed import sincos_1d, sincos_pos_embed_2d
from explora_geo.models.satmae_group_mae import patchify_bands
from explora_geo.models.weights import get_weight

# A 2-block, 64-wide group ViT/8 on 32 px images: 3 groups x 16 patches.
TINY: dict[str, Any] = {
    'img_size': 32,
    'patch_size': 8,
    'embed_dim': 64,
    'depth': 2,
    'num_heads': 2,
    'channel_embed_dim': 16,
}
TINY_DECODER: dict[str, Any] = {
    'decoder_embed_dim': 32,
    'decoder_depth': 2,
    'decoder_num_heads': 2,
    'decoder_channel_embed_dim': 8,
}
KEPT = [SENTINEL2_BANDS.index(b) for b in SATMAE_BANDS]


def tiny_vit(**kwargs: Any) -> GroupChannelViT:
    torch.manual_seed(0)
    model = timm.create_model('explora_vitb_satmae_group', **{**TINY, **kwargs})
    assert isinstance(model, GroupChannelViT)
    return model.eval()


def embeds(model: GroupChannelViT) -> list[PatchEmbed]:
    """The patch embedding of each group."""
    found = []
    for embed in model.patch_embed.children():
        assert isinstance(embed, PatchEmbed)
        found.append(embed)
    return found


def tiny_mae(**kwargs: Any) -> GroupChannelMAE:
    torch.manual_seed(0)
    model = create_mae(
        'explora_vitb_satmae_group', **{**TINY, **TINY_DECODER, **kwargs}
    )
    assert isinstance(model, GroupChannelMAE)
    return model


def closed_form_1d(dim: int, pos: float) -> list[float]:
    """MAE's 1D encoding: sin(p / 10000^(2k/dim)) then cos(...), k < dim/2."""
    freqs = [1 / 10000 ** (2 * k / dim) for k in range(dim // 2)]
    return [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]


def test_registered_sizes_on_meta() -> None:
    assert {'explora_vitl_satmae_group', 'explora_vitb_satmae_group'} <= set(
        timm.list_models('explora_*satmae_group')
    )
    with torch.device('meta'):
        large = timm.create_model('explora_vitl_satmae_group', num_classes=62)
        base = timm.create_model('explora_vitb_satmae_group')
        assert isinstance(large, GroupChannelViT)
        tokens = large.forward_features(torch.empty(1, 13, 96, 96))
    # SatMAE's fine-tuned ViT-L classifier (62 fMoW classes) holds 303.15M values.
    assert sum(p.numel() for p in large.parameters()) == 303_146_814
    assert sum(p.numel() for p in base.parameters()) > 85e6
    # 96 px, patch 8: 3 groups x 144 patches + the class token.
    assert tokens.shape == (1, 1 + 3 * 144, 1024)
    assert large.pos_embed.shape == (1, 145, 768)
    assert large.channel_embed.shape == (1, 3, 256)
    cfg = cast(dict[str, Any], large.pretrained_cfg)
    assert cfg['input_size'] == (13, 96, 96)
    assert cfg['url'].endswith('explora_mae_fmow_sentinel_encoder_only.pth')
    assert [tuple(e.proj.weight.shape) for e in embeds(large)] == [
        (1024, 4, 8, 8),
        (1024, 4, 8, 8),
        (1024, 2, 8, 8),
    ]


def test_sincos_tables_match_closed_form() -> None:
    positions = torch.tensor([0.0, 1.0, 2.0, 7.0, 23.0])
    table = sincos_1d(16, positions)
    expected = torch.tensor([closed_form_1d(16, float(p)) for p in positions])
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)

    model = tiny_vit()
    pos_dim, grid = 64 - 16, 4
    pos = model.pos_embed[0].detach()
    assert torch.equal(pos[0], torch.zeros(pos_dim))  # class token row
    for row in range(grid):
        for col in range(grid):
            # First half encodes the column, second half the row (MAE's layout).
            want = closed_form_1d(pos_dim // 2, col) + closed_form_1d(pos_dim // 2, row)
            torch.testing.assert_close(
                pos[1 + row * grid + col], torch.tensor(want), atol=1e-6, rtol=0
            )
    for g in range(3):
        torch.testing.assert_close(
            model.channel_embed[0, g].detach(),
            torch.tensor(closed_form_1d(16, g)),
            atol=1e-6,
            rtol=0,
        )
    assert model.channel_cls_embed is not None
    assert torch.equal(model.channel_cls_embed, torch.zeros(1, 1, 16))
    # init_weights re-randomises timm's parts but the tables stay sin-cos.
    model.init_weights()
    torch.testing.assert_close(
        model.pos_embed.detach(), sincos_pos_embed_2d(pos_dim, grid), atol=1e-6, rtol=0
    )


def test_groups_receive_their_bands() -> None:
    embed = GroupPatchEmbed(32, 8, None, 16)
    full = torch.arange(13.0).view(1, 13, 1, 1).expand(1, 13, 32, 32)
    parts = embed.split(full)
    names = [
        [SENTINEL2_BANDS[int(p[0, c, 0, 0])] for c in range(p.shape[1])] for p in parts
    ]
    assert names == [list(g) for g in SATMAE_GROUPS]
    kept = embed.split(full[:, KEPT])
    assert all(torch.equal(a, b) for a, b in zip(parts, kept, strict=True))


def test_13_and_10_bands_give_the_same_output() -> None:
    model = tiny_vit(num_classes=5)
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(model(x[:, KEPT]), out)
        # The dropped bands B1, B9, B10 have no influence.
        x[:, [0, 9, 10]] = torch.randn(2, 3, 32, 32)
        assert torch.equal(model(x), out)


def test_wrong_channel_count_names_both_band_lists() -> None:
    model = tiny_vit()
    with pytest.raises(ValueError, match=r'7 channels') as err:
        model(torch.randn(1, 7, 32, 32))
    message = str(err.value)
    assert (
        '13 bands (B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12)' in message
    )
    assert '10 kept bands (B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12)' in message
    with pytest.raises(ValueError, match=r'in_chans=4 does not match.*expected 13'):
        tiny_vit(in_chans=4)


def test_bands_and_groups_configurable_by_name() -> None:
    model = tiny_vit(
        in_chans=3,
        input_bands=('B4', 'B3', 'B2'),
        bands=('B4', 'B3', 'B2'),
        groups=(('B2', 'B3'), ('B4',)),
    )
    assert [e.proj.in_channels for e in embeds(model)] == [2, 1]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, 1 + 2 * 16, 64)
    with pytest.raises(ValueError, match=r"\['B13'\] are not among"):
        tiny_vit(groups=(('B2', 'B13'),))
    with pytest.raises(ValueError, match='more than one group'):
        tiny_vit(groups=(('B2', 'B3'), ('B3', 'B4')))


def satmae_forward_features(model: GroupChannelViT, x: torch.Tensor) -> torch.Tensor:
    """``GroupChannelsVisionTransformer.forward_features`` of SatMAE, written out."""
    assert model.channel_cls_embed is not None and model.cls_token is not None
    x = x[:, KEPT]
    embeds = [
        model.patch_embed[i](x[:, [SATMAE_BANDS.index(b) for b in group]])
        for i, group in enumerate(SATMAE_GROUPS)
    ]
    x = torch.stack(embeds, dim=1)
    b, g, num, d = x.shape
    channel = model.channel_embed.unsqueeze(2).expand(-1, -1, num, -1)
    pos = model.pos_embed[:, 1:, :].unsqueeze(1).expand(-1, g, -1, -1)
    x = (x + torch.cat((pos, channel), dim=-1)).view(b, -1, d)
    cls_pos = torch.cat((model.pos_embed[:, :1, :], model.channel_cls_embed), dim=-1)
    x = torch.cat((cls_pos + model.cls_token.expand(b, -1, -1), x), dim=1)
    for blk in model.blocks:
        x = blk(x)
    return x


@pytest.mark.parametrize('pool', ['avg', 'token'])
def test_matches_satmae_classifier(pool: str) -> None:
    model = tiny_vit(num_classes=5, global_pool=pool)
    assert model.channel_cls_embed is not None
    with torch.no_grad():
        model.channel_cls_embed.normal_()  # a trained, non-zero value
        x = torch.randn(2, 13, 32, 32)
        tokens = satmae_forward_features(model, x)
        if pool == 'avg':  # SatMAE's global_pool=True: mean of patch tokens, fc_norm
            feats = model.fc_norm(tokens[:, 1:].mean(dim=1))
        else:
            feats = model.norm(tokens)[:, 0]
        torch.testing.assert_close(model(x), model.head(feats), atol=1e-5, rtol=1e-5)


def test_group_encoding_distinguishes_groups() -> None:
    model = tiny_vit()
    with torch.no_grad():
        # Groups 0 and 1 (4 bands each) see the same pixels through the same weights.
        model.patch_embed[1].load_state_dict(model.patch_embed[0].state_dict())
        x = torch.randn(1, 13, 32, 32)
        x[:, [SENTINEL2_BANDS.index(b) for b in SATMAE_GROUPS[1]]] = x[
            :, [SENTINEL2_BANDS.index(b) for b in SATMAE_GROUPS[0]]
        ]
        tokens = model.forward_features(x)[:, 1:].unflatten(1, (3, 16))
        # Only the group encoding tells them apart ...
        assert (tokens[:, 0] - tokens[:, 1]).abs().max() > 1e-2
        # ... and without it they are the same tokens.
        model.channel_embed[:, 1] = model.channel_embed[:, 0]
        tokens = model.forward_features(x)[:, 1:].unflatten(1, (3, 16))
        torch.testing.assert_close(tokens[:, 0], tokens[:, 1])


def test_forward_intermediates_and_features_only() -> None:
    model = tiny_vit()
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[0, 1])
        tokens = model.forward_intermediates(x, indices=[1], output_fmt='NLC')[1][0]
    assert final.shape == (2, 49, 64)
    assert [m.shape for m in maps] == [(2, 3 * 64, 4, 4)] * 2
    # Channels g*D:(g+1)*D at (row, col) hold group g's token of that location.
    g, row, col = 2, 1, 3
    torch.testing.assert_close(
        maps[1][:, g * 64 : (g + 1) * 64, row, col], tokens[:, g * 16 + row * 4 + col]
    )
    features = timm.create_model(
        'explora_vitb_satmae_group', features_only=True, out_indices=(1,), **TINY
    )
    assert isinstance(features.feature_info, FeatureInfo)
    assert features.feature_info.channels() == [3 * 64]
    assert [f.shape for f in features(x)] == [(2, 192, 4, 4)]


def test_torchgeo_classification_with_13_bands() -> None:
    # ViT-L on the meta device: TorchGeo builds it by name and runs it (shapes only).
    with torch.device('meta'):
        task = Classification(
            model='explora_vitl_satmae_group', in_channels=13, num_classes=62
        )
        assert task(torch.empty(2, 13, 96, 96)).shape == (2, 62)
        assert task(torch.empty(2, 10, 96, 96)).shape == (2, 62)
    assert isinstance(task.model, GroupChannelViT)
    assert task.model.embed_dim == 1024 and len(task.model.blocks) == 24
    # The same through a tiny model with real numbers.
    tiny = tiny_vit(num_classes=62)
    assert tiny(torch.randn(1, 13, 32, 32)).shape == (1, 62)


def test_torchgeo_loads_an_mae_encoder_state_dict() -> None:
    """TorchGeo's loader (non-strict) accepts the MAE encoder layout: only the
    classifier's fresh tensors are missing and only the MAE's final norm is
    unexpected (average pooling replaces it)."""
    mae = tiny_mae()
    encoder_sd = {k: v.clone() for k, v in mae.encoder.state_dict().items()}
    classifier = tiny_vit(num_classes=3)
    missing, unexpected = torchgeo_load_state_dict(classifier, dict(encoder_sd))
    assert sorted(missing) == [
        'channel_cls_embed',
        'fc_norm.bias',
        'fc_norm.weight',
        'head.bias',
        'head.weight',
    ]
    assert sorted(unexpected) == ['norm.bias', 'norm.weight']
    assert torch.equal(
        classifier.get_parameter('patch_embed.2.proj.weight'),
        encoder_sd['patch_embed.2.proj.weight'],
    )


def test_weights_enum_metadata() -> None:
    weights = ExPLoRAViTL8SatMAEGroupWeights.FMOW_SENTINEL
    assert get_weight('ExPLoRAViTL8SatMAEGroupWeights.FMOW_SENTINEL') is weights
    assert weights.meta['bands'] == SENTINEL2_BANDS
    assert weights.meta['model'] == 'explora_vitl_satmae_group'
    assert weights.url.endswith(
        'explora_mae_multispectral/explora_mae_fmow_sentinel_encoder_only.pth'
    )
    assert ExPLoRAViTL8SatMAEGroupWeights.FMOW_SENTINEL_FULL.url.endswith(
        'explora_mae_multispectral/explora_mae_fmow_sentinel.pth'
    )
    # SatMAE normalisation: clip((x - (mean - 2 std)) / (4 std), 0, 1), band B2.
    mean, std = 1184.38, 650.28
    x = torch.zeros(1, 13, 2, 2)
    x[:, 1, 0, 0] = mean
    x[:, 1, 0, 1] = mean + 10 * std
    x[:, 1, 1, 0] = mean - 3 * std
    out = weights.transforms(x)
    assert out[0, 1, 0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert out[0, 1, 0, 1].item() == 1.0
    assert out[0, 1, 1, 0].item() == 0.0


def test_mae_shapes_masking_and_loss() -> None:
    model = tiny_mae(norm_pix_loss=False)
    x = torch.randn(2, 13, 32, 32)
    torch.manual_seed(1)
    out = model(x, mask_ratio=0.75)
    assert out.pred.shape == (2, 10, 16, 64)  # kept bands in order, L, p*p
    assert out.mask.shape == (2, 3, 16)
    assert out.mask.sum(dim=(1, 2)).tolist() == [36.0, 36.0]  # 48 tokens, 12 kept
    # SatMAE's loss: per token, mean over its group's pixels; mean over removed tokens.
    target = patchify_bands(x[:, KEPT], 8).transpose(1, 2)  # (B, C, L, p*p)
    err = (out.pred - target).pow(2).mean(dim=-1)  # (B, C, L)
    total = 0.0
    for g, group in enumerate(SATMAE_GROUPS):
        idx = [SATMAE_BANDS.index(b) for b in group]
        total = total + (err[:, idx].mean(dim=1) * out.mask[:, g]).sum()
    torch.testing.assert_close(out.loss, total / out.mask.sum())


def test_mae_group_heads_predict_their_bands() -> None:
    model = tiny_mae(norm_pix_loss=False)
    with torch.no_grad():
        for head in model.decoder_pred.children():
            assert isinstance(head, nn.Linear)
            head.weight.zero_()
        # Head 1 (B5, B6, B7, B8A) outputs the constant 7 for its 3rd band, B7.
        bias = model.get_parameter('decoder_pred.1.bias')
        bias.zero_()
        bias[2 * 64 : 3 * 64] = 7.0
        out = model(torch.randn(1, 10, 32, 32))
    assert torch.all(out.pred[:, SATMAE_BANDS.index('B7')] == 7.0)
    assert out.pred.abs().sum() == 7.0 * 16 * 64


def test_mae_spatial_mask_shared_by_groups() -> None:
    model = tiny_mae(spatial_mask=True)
    torch.manual_seed(0)
    out = model(torch.randn(3, 13, 32, 32), mask_ratio=0.75)
    assert torch.equal(out.mask[:, 0], out.mask[:, 1])
    assert torch.equal(out.mask[:, 0], out.mask[:, 2])
    assert out.mask[:, 0].sum(dim=1).tolist() == [12.0] * 3
    assert torch.isfinite(out.loss)
