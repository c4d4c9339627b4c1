"""ExPLoRA on the SatMAE group-channel and temporal models: trainable counts,
merging, and the published checkpoint layouts."""

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import Tensor, nn

from explora_geo.adapter import (
    ExPLoRAConfig,
    apply_explora,
    lora_layers,
    merge_and_unload,
    merge_lora,
    trainable_parameters,
)
from explora_geo.models import (
    GroupChannelMAE,
    GroupChannelViT,
    TemporalViT,
    load_checkpoint,
)
from explora_geo.models.checkpoints import read_checkpoint
from explora_geo.models.mae import create_mae
from explora_geo.tasks.explora_mae import ExPLoRAMAE, freeze_decoder
from tests.data.checkpoints.layouts import _block

# Tiny group-channel ViT/8: 32 px, 3 groups x 16 patches, 64 wide (48 position
# + 16 group dims); decoder 32 wide (24 + 8), as SatMAE's shapes scaled down.
D, DEPTH, CH, DEC_D, DEC_DEPTH, DEC_CH, GRID, P = 64, 2, 16, 32, 2, 8, 4, 8
ENCODER: dict[str, Any] = {
    'patch_size': P,
    'embed_dim': D,
    'depth': DEPTH,
    'num_heads': 2,
    'channel_embed_dim': CH,
}
DECODER: dict[str, Any] = {
    'decoder_embed_dim': DEC_D,
    'decoder_depth': DEC_DEPTH,
    'decoder_num_heads': 2,
    'decoder_channel_embed_dim': DEC_CH,
}
GROUP_SIZES = (4, 4, 2)
M_1L_R32 = ExPLoRAConfig(
    unfrozen_blocks=(0, -1), rank=32, train_patch_embed=True, train_pos_embed=True
)


def tiny_mae(**kwargs: Any) -> GroupChannelMAE:
    torch.manual_seed(0)
    model = create_mae(
        'explora_vitb_satmae_group', img_size=32, **{**ENCODER, **DECODER, **kwargs}
    )
    assert isinstance(model, GroupChannelMAE)
    return model


def tiny_vit(**kwargs: Any) -> GroupChannelViT:
    torch.manual_seed(0)
    model = timm.create_model(
        'explora_vitb_satmae_group', img_size=32, **{**ENCODER, **kwargs}
    )
    assert isinstance(model, GroupChannelViT)
    return model.eval()


def randomize_lora(model: nn.Module) -> None:
    """Give every LoRA factor B a non-zero value (B starts at zero)."""
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.5)


# ---------------------------------------------------------------- layouts


def satmae_group_encoder() -> dict[str, Tensor]:
    """Encoder keys of SatMAE's group-channel MAE (pre-training checkpoint)."""
    sd = {
        'cls_token': torch.randn(1, 1, D),
        'pos_embed': torch.randn(1, GRID * GRID + 1, D - CH),
        'channel_embed': torch.randn(1, 3, CH),
        'norm.weight': torch.randn(D),
        'norm.bias': torch.randn(D),
    }
    for g, size in enumerate(GROUP_SIZES):
        sd[f'patch_embed.{g}.proj.weight'] = torch.randn(D, size, P, P)
        sd[f'patch_embed.{g}.proj.bias'] = torch.randn(D)
    for i in range(DEPTH):
        sd |= _block(f'blocks.{i}', D, 4 * D, layerscale=False)
    return sd


def satmae_group_mae() -> dict[str, dict[str, Tensor]]:
    """SatMAE group-channel MAE checkpoint (``{"model": ...}``, encoder + decoder)."""
    sd = satmae_group_encoder() | {
        'mask_token': torch.randn(1, 1, DEC_D),
        'decoder_pos_embed': torch.randn(1, GRID * GRID + 1, DEC_D - DEC_CH),
        'decoder_channel_embed': torch.randn(1, 4, DEC_CH),
        'decoder_embed.weight': torch.randn(DEC_D, D),
        'decoder_embed.bias': torch.randn(DEC_D),
        'decoder_norm.weight': torch.randn(DEC_D),
        'decoder_norm.bias': torch.randn(DEC_D),
    }
    for i in range(DEC_DEPTH):
        sd |= _block(f'decoder_blocks.{i}', DEC_D, 4 * DEC_D, layerscale=False)
    for g, size in enumerate(GROUP_SIZES):
        sd[f'decoder_pred.{g}.weight'] = torch.randn(size * P * P, DEC_D)
        sd[f'decoder_pred.{g}.bias'] = torch.randn(size * P * P)
    return {'model': sd}


def satmae_group_classifier(fc_norm: bool = False) -> dict[str, dict[str, Tensor]]:
    """SatMAE group-channel ViT classifier (fine-tuning checkpoint, 62 classes)."""
    sd = satmae_group_encoder() | {
        'channel_cls_embed': torch.randn(1, 1, CH),
        'head.weight': torch.randn(62, D),
        'head.bias': torch.randn(62),
    }
    if fc_norm:  # trained with SatMAE's default global_pool=True
        sd['fc_norm.weight'] = sd.pop('norm.weight')
        sd['fc_norm.bias'] = sd.pop('norm.bias')
    return {'model': sd}


def with_split_projections(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """ExPLoRA full release: split q/k/v next to the merged ``qkv`` and stale
    LoRA factors (already merged), for encoder and decoder blocks."""
    out = dict(sd)
    for key, value in sd.items():
        if '.attn.qkv.' not in key:
            continue
        base, kind = key.split('.attn.qkv.')
        for name, part in zip(
            ('q_proj', 'k_proj', 'v_proj'), value.chunk(3), strict=True
        ):
            out[f'{base}.attn.{name}.{kind}'] = part.clone()
        if kind == 'weight':
            d = value.shape[1]
            for name in ('q_proj', 'v_proj'):
                out[f'{base}.attn.{name}.lora_A.weight'] = torch.randn(4, d)
                out[f'{base}.attn.{name}.lora_B.weight'] = torch.randn(d, 4)
    return out


# ---------------------------------------------------------------- counts


def test_m_1l_r32_trains_the_paper_29_7m_values() -> None:
    """M-[1,L]-r32 on the ViT-L group-channel MAE (the paper's 29.7M).

    Counted: everything with ``requires_grad`` in the MAE after the encoder
    adapter and the decoder adapter of the task: blocks 1 and L in full; LoRA
    (r=32) on Q and V of the other 22 blocks; all encoder norms outside those
    blocks; the class token; the three per-group patch embeddings (new for
    13-band input); the decoder's LoRA (r=32) on Q and V of its 8 blocks, its
    norms and its per-group prediction heads. Not counted: the sin-cos
    position/group tables, which SatMAE's MAE keeps fixed (buffers here), the
    frozen decoder embedding and the mask token.
    """
    with torch.device('meta'):
        mae = create_mae('explora_vitl_satmae_group')
        apply_explora(mae.encoder, M_1L_R32)
        freeze_decoder(mae, rank=32)
    d, dd, r, depth = 1024, 512, 32, 24
    block = (3 * d * d + 3 * d) + (d * d + d) + 2 * (4 * d * d) + 4 * d + d + 4 * d
    expected = {
        'unfrozen blocks 1, L': 2 * block,
        'encoder LoRA': (depth - 2) * 2 * (2 * r * d),
        'encoder norms': (depth - 2) * 2 * 2 * d + 2 * d,
        'cls token': d,
        'patch embeddings': sum(d * c * 8 * 8 + d for c in (4, 4, 2)),
        'decoder LoRA': 8 * 2 * (2 * r * dd),
        'decoder norms': 8 * 2 * 2 * dd + 2 * dd,
        'decoder heads': sum(c * 64 * dd + c * 64 for c in (4, 4, 2)),
    }

    def category(name: str) -> str:
        if name.startswith(('encoder.blocks.0.', 'encoder.blocks.23.')):
            return 'unfrozen blocks 1, L'
        if name.endswith(('lora_A', 'lora_B')):
            return 'decoder LoRA' if name.startswith('decoder_') else 'encoder LoRA'
        if name.startswith('encoder.patch_embed.'):
            return 'patch embeddings'
        if name == 'encoder.cls_token':
            return 'cls token'
        if name.startswith('decoder_pred.'):
            return 'decoder heads'
        if '.norm' in name or name.startswith(('encoder.norm.', 'decoder_norm.')):
            return 'decoder norms' if name.startswith('decoder_') else 'encoder norms'
        raise AssertionError(f'unexpected trainable tensor {name}')

    found = dict.fromkeys(expected, 0)
    for name, param in trainable_parameters(mae).items():
        found[category(name)] += param.numel()
    assert found == expected
    total = sum(found.values())
    assert total == 29_697_664
    assert round(total / 1e6, 1) == 29.7
    names = {n for n, _ in mae.named_parameters()}
    assert not names & {
        'encoder.pos_embed',
        'encoder.channel_embed',
        'decoder_pos_embed',
    }
    assert not mae.mask_token.requires_grad
    assert not mae.decoder_embed.weight.requires_grad


def test_classifier_encodings_train_with_train_pos_embed() -> None:
    model = tiny_vit()
    apply_explora(model, M_1L_R32)
    trainable = set(trainable_parameters(model))
    assert {'pos_embed', 'channel_embed', 'channel_cls_embed'} <= trainable
    assert {f'patch_embed.{g}.proj.weight' for g in range(3)} <= trainable
    frozen = tiny_vit()
    apply_explora(frozen, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4))
    trainable = set(trainable_parameters(frozen))
    assert not trainable & {'pos_embed', 'channel_embed', 'channel_cls_embed'}
    assert not any(n.startswith('patch_embed') for n in trainable)


# ---------------------------------------------------------------- merging


def test_merged_equals_unmerged_group_vit() -> None:
    model = tiny_vit(num_classes=5)
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        plain = model.forward_features(x)
    apply_explora(model, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4, alpha=4.0))
    randomize_lora(model)
    with torch.no_grad():
        unmerged = model.forward_features(x)
        logits = model.forward_head(unmerged)
        merge_and_unload(model)
        merged = model.forward_features(x)
    assert (unmerged - plain).abs().max() > 1e-2  # the adapter is not a no-op
    assert (merged - unmerged).abs().max() <= 1e-5
    assert (model.forward_head(merged) - logits).abs().max() <= 1e-5
    assert not any(k.endswith(('lora_A', 'lora_B')) for k in model.state_dict())


def test_merged_equals_unmerged_group_mae_with_decoder_lora() -> None:
    mae = tiny_mae()
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        torch.manual_seed(3)
        plain = mae(x)
    apply_explora(mae.encoder, ExPLoRAConfig(unfrozen_blocks=(0,), rank=4, alpha=4.0))
    freeze_decoder(mae, rank=4, alpha=4.0)
    randomize_lora(mae)
    with torch.no_grad():
        torch.manual_seed(3)
        unmerged = mae(x)
        merge_lora(mae)
        torch.manual_seed(3)
        merged = mae(x)
    assert torch.equal(unmerged.mask, merged.mask)
    assert (unmerged.pred - plain.pred).abs().max() > 1e-2
    assert (merged.pred - unmerged.pred).abs().max() <= 1e-5
    assert abs(merged.loss.item() - unmerged.loss.item()) <= 1e-5


def test_merged_equals_unmerged_temporal() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        'explora_vitl_satmae_temporal',
        img_size=32,
        patch_size=8,
        embed_dim=64,
        time_embed_dim=8,
        depth=2,
        num_heads=2,
        num_classes=5,
    ).eval()
    assert isinstance(model, TemporalViT)
    apply_explora(model, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4, alpha=4.0))
    randomize_lora(model)
    x = torch.randn(2, 3, 3, 32, 32)
    ts = torch.tensor([[2016, 7, 14], [2017, 1, 0], [2015, 12, 23]]).expand(2, 3, 3)
    with torch.no_grad():
        unmerged = model(x, timestamps=ts)
        merge_and_unload(model)
        merged = model(x, timestamps=ts)
    assert (merged - unmerged).abs().max() <= 1e-5


# ---------------------------------------------------------------- layouts


def test_satmae_group_mae_checkpoint_loads_every_tensor() -> None:
    ckpt = satmae_group_mae()
    mae = tiny_mae()
    mae.load_source_checkpoint(ckpt)
    state = mae.state_dict()
    for key, value in ckpt['model'].items():
        name = key if key.startswith(('decoder_', 'mask_token')) else f'encoder.{key}'
        assert torch.equal(state[name], value), key
    assert len(state) == len(ckpt['model'])


def test_satmae_group_classifier_checkpoints() -> None:
    token = satmae_group_classifier()
    model = load_checkpoint(tiny_vit(num_classes=62, global_pool='token'), token)
    for key, value in token['model'].items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="global_pool='token'"):
        load_checkpoint(tiny_vit(num_classes=62), token)
    avg = satmae_group_classifier(fc_norm=True)
    model = load_checkpoint(tiny_vit(num_classes=62), avg)
    assert torch.equal(
        model.get_parameter('fc_norm.weight'), avg['model']['fc_norm.weight']
    )
    assert torch.equal(model.get_parameter('head.bias'), avg['model']['head.bias'])
    with pytest.raises(ValueError, match="global_pool='avg'"):
        load_checkpoint(tiny_vit(num_classes=62, global_pool='token'), avg)


def test_explora_encoder_only_release_through_timm(tmp_path: Path) -> None:
    """``explora_mae_fmow_sentinel_encoder_only.pth``: ``{"model": encoder}``,
    loaded by timm's ``pretrained=True`` machinery with the registered filter."""
    encoder = satmae_group_encoder()
    path = tmp_path / 'explora_mae_fmow_sentinel_encoder_only.pth'
    torch.save({'model': encoder}, path)
    model = timm.create_model(
        'explora_vitb_satmae_group',
        pretrained=True,
        pretrained_cfg_overlay={'file': str(path)},
        img_size=32,
        **ENCODER,
        global_pool='token',
    )
    for key, value in encoder.items():
        assert torch.equal(model.state_dict()[key], value), key
    # Average pooling (the default): the MAE's final norm gives way to a fresh fc_norm.
    avg = load_checkpoint(tiny_vit(num_classes=3), read_checkpoint(path))
    assert torch.equal(avg.get_parameter('fc_norm.weight'), torch.ones(D))
    assert torch.equal(avg.get_parameter('channel_cls_embed'), torch.zeros(1, 1, CH))
    assert torch.equal(
        avg.get_parameter('blocks.1.mlp.fc2.bias'), encoder['blocks.1.mlp.fc2.bias']
    )


def test_explora_full_release_drops_split_projections_and_lora(tmp_path: Path) -> None:
    """``explora_mae_fmow_sentinel.pth``: the full MAE with ``q_proj/k_proj/v_proj``
    next to the merged ``qkv`` and stale ``lora_A/lora_B``."""
    clean = satmae_group_mae()['model']
    path = tmp_path / 'explora_mae_fmow_sentinel.pth'
    torch.save({'model': with_split_projections(clean)}, path)
    checkpoint = read_checkpoint(path)
    mae = tiny_mae()
    mae.load_source_checkpoint(checkpoint)
    state = mae.state_dict()
    assert not any('lora' in k or 'q_proj' in k for k in state)
    assert torch.equal(
        state['encoder.blocks.1.attn.qkv.weight'], clean['blocks.1.attn.qkv.weight']
    )
    assert torch.equal(
        state['decoder_blocks.0.attn.qkv.bias'], clean['decoder_blocks.0.attn.qkv.bias']
    )
    encoder = load_checkpoint(tiny_vit(global_pool='token'), checkpoint)
    assert torch.equal(
        encoder.get_parameter('blocks.0.attn.qkv.weight'),
        clean['blocks.0.attn.qkv.weight'],
    )


def test_rgb_mae_source_initialises_the_group_mae() -> None:
    """ExPLoRA's multispectral run starts from the RGB MAE: blocks, norms, class
    token and decoder come from it; patch embeddings, tables and the per-group
    heads are new."""
    from tests.data.checkpoints import layouts

    rgb = layouts.mae(
        d=D, depth=DEPTH, grid=14, patch=16, dec_d=DEC_D, dec_depth=DEC_DEPTH
    )
    mae = tiny_mae()
    fresh = {
        k: v.clone()
        for k, v in mae.state_dict().items()
        if k.startswith(('encoder.patch_embed.', 'encoder.pos_embed', 'decoder_pred.'))
    }
    mae.load_source_checkpoint(rgb)
    state = mae.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fresh.items())
    for key in ('blocks.1.attn.qkv.weight', 'cls_token', 'norm.bias'):
        assert torch.equal(state[f'encoder.{key}'], rgb['model'][key])
    for key in (
        'decoder_blocks.1.mlp.fc1.weight',
        'decoder_embed.weight',
        'mask_token',
    ):
        assert torch.equal(state[key], rgb['model'][key])


def test_exported_encoder_round_trips_into_the_classifier(tmp_path: Path) -> None:
    """Adapted MAE encoder -> merged plain ViT -> file -> classifier: same features."""
    mae = tiny_mae()
    apply_explora(mae.encoder, M_1L_R32)
    randomize_lora(mae.encoder)
    encoder = merge_and_unload(mae.encoder).eval()
    path = tmp_path / 'encoder.pth'
    torch.save({'model': encoder.state_dict()}, path)
    classifier = load_checkpoint(
        tiny_vit(global_pool='token'), read_checkpoint(path), source=str(path)
    )
    assert isinstance(classifier, GroupChannelViT)
    assert isinstance(encoder, GroupChannelViT)
    x = torch.randn(2, 10, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            classifier.forward_features(x), encoder.forward_features(x)
        )


def test_wrong_channel_count_errors() -> None:
    mae = tiny_mae()
    with pytest.raises(ValueError, match='input has 12 channels') as err:
        mae(torch.randn(1, 12, 32, 32))
    assert 'B1, B2' in str(err.value) and '10 kept bands' in str(err.value)
    # The task's RGB default of 3 channels is refused when the model is built.
    with pytest.raises(ValueError, match=r'in_chans=3 does not match.*13 \(B1'):
        tiny_mae(in_chans=3)


@pytest.mark.filterwarnings('ignore:You are trying to `self.log')
def test_explora_mae_task_trains_the_group_mae() -> None:
    task = ExPLoRAMAE(
        model='explora_vitb_satmae_group',
        in_channels=13,
        img_size=32,
        adapter=ExPLoRAConfig(
            unfrozen_blocks=(0, -1),
            rank=4,
            train_patch_embed=True,
            train_pos_embed=True,
        ),
        decoder_lora_rank=4,
        model_kwargs=ENCODER,
        decoder_kwargs=DECODER,
        transform=nn.Identity(),
    )
    loss = task.training_step({'image': torch.rand(2, 13, 32, 32)}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    model = task.model
    assert model.encoder.patch_embed[2].proj.weight.grad is not None
    assert model.get_parameter('decoder_pred.1.weight').grad is not None
    assert model.get_parameter('decoder_blocks.0.attn.qkv.lora_B').grad is not None
    assert model.decoder_embed.weight.grad is None
