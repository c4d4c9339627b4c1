"""Random state dicts in the key layouts of the published checkpoints, at tiny size.

Names and shapes follow the reference model definitions (DinoV2, MAE, ExPLoRA
releases); only the widths are small. Used by the checkpoint-loading tests.
"""

import torch
from torch import Tensor


def _block(
    prefix: str, d: int, mlp: int, layerscale: bool, swiglu: bool = False
) -> dict[str, Tensor]:
    out = {
        f'{prefix}.norm1.weight': torch.randn(d),
        f'{prefix}.norm1.bias': torch.randn(d),
        f'{prefix}.attn.qkv.weight': torch.randn(3 * d, d),
        f'{prefix}.attn.qkv.bias': torch.randn(3 * d),
        f'{prefix}.attn.proj.weight': torch.randn(d, d),
        f'{prefix}.attn.proj.bias': torch.randn(d),
        f'{prefix}.norm2.weight': torch.randn(d),
        f'{prefix}.norm2.bias': torch.randn(d),
    }
    if swiglu:
        out |= {
            f'{prefix}.mlp.w12.weight': torch.randn(2 * mlp, d),
            f'{prefix}.mlp.w12.bias': torch.randn(2 * mlp),
            f'{prefix}.mlp.w3.weight': torch.randn(d, mlp),
            f'{prefix}.mlp.w3.bias': torch.randn(d),
        }
    else:
        out |= {
            f'{prefix}.mlp.fc1.weight': torch.randn(mlp, d),
            f'{prefix}.mlp.fc1.bias': torch.randn(mlp),
            f'{prefix}.mlp.fc2.weight': torch.randn(d, mlp),
            f'{prefix}.mlp.fc2.bias': torch.randn(d),
        }
    if layerscale:
        out |= {
            f'{prefix}.ls1.gamma': torch.randn(d),
            f'{prefix}.ls2.gamma': torch.randn(d),
        }
    return out


def dinov2(
    d: int = 32, depth: int = 3, grid: int = 37, patch: int = 14, swiglu_hidden: int = 0
) -> dict[str, Tensor]:
    """``dinov2_vit*14_pretrain.pth``: bare state dict, pos_embed for a 518 px grid."""
    sd = {
        'cls_token': torch.randn(1, 1, d),
        'pos_embed': torch.randn(1, grid * grid + 1, d),
        'mask_token': torch.randn(1, d),
        'patch_embed.proj.weight': torch.randn(d, 3, patch, patch),
        'patch_embed.proj.bias': torch.randn(d),
        'norm.weight': torch.randn(d),
        'norm.bias': torch.randn(d),
    }
    for i in range(depth):
        mlp = swiglu_hidden or 4 * d
        sd |= _block(f'blocks.{i}', d, mlp, layerscale=True, swiglu=bool(swiglu_hidden))
    return sd


def mae(
    d: int = 32,
    depth: int = 3,
    grid: int = 14,
    patch: int = 16,
    decoder: bool = True,
    dec_d: int = 16,
    dec_depth: int = 2,
) -> dict[str, dict[str, Tensor]]:
    """``mae_pretrain_vit_*.pth`` / ``mae_visualize_vit_*.pth``: ``{"model": ...}``."""
    sd = {
        'cls_token': torch.randn(1, 1, d),
        'pos_embed': torch.randn(1, grid * grid + 1, d),
        'patch_embed.proj.weight': torch.randn(d, 3, patch, patch),
        'patch_embed.proj.bias': torch.randn(d),
        'norm.weight': torch.randn(d),
        'norm.bias': torch.randn(d),
    }
    for i in range(depth):
        sd |= _block(f'blocks.{i}', d, 4 * d, layerscale=False)
    if decoder:
        sd |= {
            'mask_token': torch.randn(1, 1, dec_d),
            'decoder_pos_embed': torch.randn(1, grid * grid + 1, dec_d),
            'decoder_embed.weight': torch.randn(dec_d, d),
            'decoder_embed.bias': torch.randn(dec_d),
            'decoder_norm.weight': torch.randn(dec_d),
            'decoder_norm.bias': torch.randn(dec_d),
            'decoder_pred.weight': torch.randn(patch * patch * 3, dec_d),
            'decoder_pred.bias': torch.randn(patch * patch * 3),
        }
        for i in range(dec_depth):
            sd |= _block(f'decoder_blocks.{i}', dec_d, 4 * dec_d, layerscale=False)
    return {'model': sd}


def explora_teacher(
    encoder: dict[str, Tensor], rank: int = 4, heads: bool = True
) -> dict[str, dict[str, Tensor]]:
    """Full ExPLoRA release: ``{"teacher": ...}`` with ``backbone.`` keys, split
    q/k/v projections holding the same merged weights as ``qkv``, stale LoRA
    factors and DINO/iBOT heads."""
    out: dict[str, Tensor] = {}
    for k, v in encoder.items():
        out[f'backbone.{k}'] = v
        if k.endswith('attn.qkv.weight') or k.endswith('attn.qkv.bias'):
            base = (
                k[: -len('qkv.weight')]
                if k.endswith('weight')
                else k[: -len('qkv.bias')]
            )
            kind = 'weight' if k.endswith('weight') else 'bias'
            q, kk, vv = v.chunk(3, dim=0)
            for name, part in (('q_proj', q), ('k_proj', kk), ('v_proj', vv)):
                out[f'backbone.{base}{name}.{kind}'] = part.clone()
            if kind == 'weight':
                d = v.shape[1]
                out[f'backbone.{base}q_proj.lora_A.weight'] = torch.randn(rank, d)
                out[f'backbone.{base}q_proj.lora_B.weight'] = torch.randn(d, rank)
                out[f'backbone.{base}v_proj.lora_A.weight'] = torch.randn(rank, d)
                out[f'backbone.{base}v_proj.lora_B.weight'] = torch.randn(d, rank)
    if heads:
        out['dino_head.mlp.0.weight'] = torch.randn(8, 4)
        out['ibot_head.last_layer.weight_g'] = torch.randn(16, 1)
    return {'teacher': out}
