from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

from explora_geo.models import (
    convert_state_dict,
    load_into,
    load_weights,
    read_checkpoint,
)
from explora_geo.models.checkpoints import (
    normalize_vit_keys,
    split_mae_decoder,
    unwrap_state_dict,
)
from tests.data.checkpoints import layouts


def dino_model(**kwargs: Any) -> nn.Module:
    args = {
        'depth': 3,
        'embed_dim': 32,
        'num_heads': 2,
        'img_size': 56,
        'num_classes': 0,
    }
    return timm.create_model('explora_vitb_dino', **{**args, **kwargs})


def test_dinov2_layout_resampled_to_model_grid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = layouts.dinov2(grid=37)
    path = tmp_path / 'dinov2_vitb14_pretrain.pth'
    torch.save(sd, path)
    model = dino_model()  # 56 px -> 4 x 4 grid
    load_weights(model, path)
    state = model.state_dict()
    torch.testing.assert_close(
        state['blocks.1.attn.qkv.weight'], sd['blocks.1.attn.qkv.weight']
    )
    torch.testing.assert_close(state['blocks.2.ls2.gamma'], sd['blocks.2.ls2.gamma'])
    torch.testing.assert_close(state['cls_token'], sd['cls_token'])
    assert state['pos_embed'].shape == (1, 17, 32)
    # The class token's position embedding is carried over unresampled.
    torch.testing.assert_close(state['pos_embed'][:, 0], sd['pos_embed'][:, 0])
    # DinoV2's interpolate_pos_encoding: bicubic, scale (4 + 0.1) / 37, no antialias.
    patches = sd['pos_embed'][:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(
        patches, scale_factor=(4.1 / 37, 4.1 / 37), mode='bicubic', antialias=False
    )
    expected = torch.cat(
        [sd['pos_embed'][:, :1], patches.permute(0, 2, 3, 1).reshape(1, 16, 32)], 1
    )
    torch.testing.assert_close(state['pos_embed'], expected)


def test_dinov2_giant_swiglu_names() -> None:
    sd = layouts.dinov2(d=32, depth=2, grid=4, swiglu_hidden=24)
    out = normalize_vit_keys(sd)
    assert 'blocks.0.mlp.fc1.weight' in out and 'blocks.0.mlp.fc2.bias' in out
    assert not any('w12' in k or 'w3' in k for k in out)
    assert 'mask_token' not in out


def test_mae_with_decoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = layouts.mae(grid=2, patch=16)
    path = tmp_path / 'mae_visualize_vit_large.pth'
    torch.save(ckpt, path)
    model = timm.create_model(
        'explora_vitl_mae',
        depth=3,
        embed_dim=32,
        num_heads=2,
        img_size=32,
        num_classes=0,
    )
    load_weights(model, path)
    torch.testing.assert_close(
        model.state_dict()['pos_embed'], ckpt['model']['pos_embed']
    )
    encoder, decoder = split_mae_decoder(unwrap_state_dict(read_checkpoint(path)))
    assert 'mask_token' in decoder and 'decoder_blocks.1.attn.qkv.weight' in decoder
    assert not any(k.startswith('decoder') for k in encoder)


def test_explora_teacher_drops_stale_lora_and_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = layouts.dinov2(grid=4)
    encoder.pop('mask_token')
    ckpt = layouts.explora_teacher(encoder)
    path = tmp_path / 'explora_dinov2_vit_large_fmow_rgb.pth'
    torch.save(ckpt, path)
    model = dino_model()
    load_weights(model, path)
    for key in ('blocks.0.attn.qkv.weight', 'blocks.2.attn.qkv.bias', 'norm.weight'):
        torch.testing.assert_close(model.state_dict()[key], encoder[key])


def test_explora_split_only_builds_fused_qkv() -> None:
    encoder = layouts.dinov2(grid=4)
    full = layouts.explora_teacher(encoder)['teacher']
    no_fused = {k: v for k, v in full.items() if '.qkv.' not in k}
    out = normalize_vit_keys(unwrap_state_dict({'teacher': no_fused}))
    torch.testing.assert_close(
        out['blocks.0.attn.qkv.weight'], encoder['blocks.0.attn.qkv.weight']
    )


def test_explora_inconsistent_split_raises() -> None:
    full = layouts.explora_teacher(layouts.dinov2(grid=4))['teacher']
    full['backbone.blocks.1.attn.v_proj.weight'] = (
        full['backbone.blocks.1.attn.v_proj.weight'] + 1
    )
    with pytest.raises(ValueError, match=r'blocks\.1\.attn\.qkv\.weight disagrees'):
        normalize_vit_keys(unwrap_state_dict({'teacher': full}))


def test_encoder_only_release(tmp_path: Path) -> None:
    encoder = layouts.dinov2(grid=4)
    encoder.pop('mask_token')
    path = tmp_path / 'explora_dinov2_vit_large_fmow_rgb_encoder_only.pth'
    torch.save({'model': encoder}, path)
    model = dino_model()
    load_weights(model, path)
    torch.testing.assert_close(model.state_dict()['pos_embed'], encoder['pos_embed'])


def test_safetensors(tmp_path: Path) -> None:
    import safetensors.torch

    encoder = layouts.dinov2(grid=4)
    path = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(encoder, str(path))
    model = dino_model()
    load_weights(model, path)
    torch.testing.assert_close(model.state_dict()['norm.bias'], encoder['norm.bias'])


def test_mismatched_keys_listed(tmp_path: Path) -> None:
    sd = layouts.dinov2(grid=4)
    del sd['blocks.1.mlp.fc2.bias']
    sd['blocks.1.mlp.extra.weight'] = torch.zeros(1)
    path = tmp_path / 'broken.pth'
    torch.save(sd, path)
    with pytest.raises(KeyError) as info:
        load_weights(dino_model(), path)
    message = str(info.value)
    assert 'broken.pth' in message
    assert "missing keys: ['blocks.1.mlp.fc2.bias']" in message
    assert "unexpected keys: ['blocks.1.mlp.extra.weight']" in message


def test_wrong_depth_names_missing_blocks(tmp_path: Path) -> None:
    path = tmp_path / 'shallow.pth'
    torch.save(layouts.dinov2(depth=2, grid=4), path)
    with pytest.raises(
        KeyError, match=r'missing keys: \[.*blocks\.2\.attn\.qkv\.weight'
    ):
        load_weights(dino_model(), path)


def test_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / 'wide.pth'
    torch.save(layouts.dinov2(d=48, grid=4), path)
    with pytest.raises((ValueError, RuntimeError), match='shape'):
        load_weights(dino_model(num_heads=2), path)


def test_in_chans_adapted() -> None:
    sd = layouts.dinov2(grid=4)
    model = dino_model(in_chans=13)
    converted = convert_state_dict(sd, model)
    assert converted['patch_embed.proj.weight'].shape == (32, 13, 14, 14)
    load_into(model, converted)


def test_new_head_is_allowed_but_other_gaps_are_not() -> None:
    sd = layouts.dinov2(grid=4)
    model = dino_model(num_classes=5)
    load_into(model, convert_state_dict(sd, model))
    with pytest.raises(KeyError, match='norm.weight'):
        load_into(
            model,
            {
                k: v
                for k, v in convert_state_dict(sd, model).items()
                if k != 'norm.weight'
            },
        )


def test_weights_only_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / 'evil.pth'
    torch.save({'model': layouts.dinov2(grid=4), 'args': object()}, path)
    with pytest.raises(ValueError, match='cannot read checkpoint'):
        read_checkpoint(path)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        read_checkpoint('nowhere.pth')


def test_lightning_checkpoint_layout(tmp_path: Path) -> None:
    model = dino_model()
    path = tmp_path / 'task.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': 'explora_vitb_dino'},
            'state_dict': {f'model.{k}': v for k, v in model.state_dict().items()},
        },
        path,
    )
    other = dino_model()
    load_weights(other, path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)


def test_unmerged_adapter_checkpoint_is_refused(tmp_path: Path) -> None:
    from explora_geo.adapter import ExPLoRAConfig, apply_explora

    model = dino_model()
    apply_explora(model, ExPLoRAConfig(rank=2))
    path = tmp_path / 'adapted.ckpt'
    torch.save(
        {'state_dict': {f'model.{k}': v for k, v in model.state_dict().items()}}, path
    )
    with pytest.raises(
        ValueError, match=r'unmerged LoRA factors \(blocks\.0\.attn\.qkv\.lora_A'
    ):
        load_weights(dino_model(), path)
