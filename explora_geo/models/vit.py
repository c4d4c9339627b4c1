"""ViT backbones for ExPLoRA, registered with timm.

``explora_vit{b,l,g}_dino`` are DinoV2 ViTs (patch 14, LayerScale, no registers)
and ``explora_vit{b,l}_mae`` MAE ViTs (patch 16). They are timm
``VisionTransformer`` models built with ``build_model_with_cfg``, so they carry
a ``pretrained_cfg``, accept ``in_chans``, ``num_classes`` and ``img_size``
(224 by default; position embeddings of a checkpoint are resampled to the
model's grid), and support ``forward_intermediates``, ``features_only`` and
gradient checkpointing.

.. versionadded:: 0.1
"""

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SwiGLUPacked
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .checkpoints import convert_state_dict

__all__ = (
    'explora_vitb_dino',
    'explora_vitb_mae',
    'explora_vitg_dino',
    'explora_vitl_dino',
    'explora_vitl_mae',
)

_HF = 'https://huggingface.co/samarkhanna/ExPLoRA/resolve/main'
_DINOV2 = 'https://dl.fbaipublicfiles.com/dinov2'
_MAE = 'https://dl.fbaipublicfiles.com/mae'


def _cfg(url: str, **kwargs: Any) -> dict[str, Any]:
    return {
        'url': url,
        'num_classes': 0,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 1.0,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        # The first tag of a model is its default for pretrained=True.
        'explora_vitl_dino.fmow_rgb': _cfg(
            f'{_HF}/explora_dinov2_fmow_rgb/explora_dinov2_vit_large_fmow_rgb_encoder_only.pth'
        ),
        'explora_vitl_dino.lvd142m': _cfg(
            f'{_DINOV2}/dinov2_vitl14/dinov2_vitl14_pretrain.pth'
        ),
        'explora_vitb_dino.fmow_rgb': _cfg(
            f'{_HF}/explora_dinov2_fmow_rgb/explora_dinov2_vit_base_fmow_rgb_encoder_only.pth'
        ),
        'explora_vitb_dino.lvd142m': _cfg(
            f'{_DINOV2}/dinov2_vitb14/dinov2_vitb14_pretrain.pth'
        ),
        'explora_vitg_dino.lvd142m': _cfg(
            f'{_DINOV2}/dinov2_vitg14/dinov2_vitg14_pretrain.pth'
        ),
        'explora_vitl_mae.in1k': _cfg(f'{_MAE}/pretrain/mae_pretrain_vit_large.pth'),
        'explora_vitl_mae.in1k_pixel': _cfg(
            f'{_MAE}/visualize/mae_visualize_vit_large.pth'
        ),
        'explora_vitb_mae.in1k': _cfg(f'{_MAE}/pretrain/mae_pretrain_vit_base.pth'),
        'explora_vitb_mae.in1k_pixel': _cfg(
            f'{_MAE}/visualize/mae_visualize_vit_base.pth'
        ),
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    model: VisionTransformer = build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=convert_state_dict,
        feature_cfg={'out_indices': out_indices, 'feature_cls': 'getter'},
        **kwargs,
    )
    return model


def _dino_args(**kwargs: Any) -> dict[str, Any]:
    return {'patch_size': 14, 'init_values': 1e-5, **kwargs}


@register_model
def explora_vitb_dino(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DinoV2 ViT-B/14 (86M), the source model of ViT-B ExPLoRA.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = _dino_args(embed_dim=768, depth=12, num_heads=12)
    return _create('explora_vitb_dino', pretrained, **{**args, **kwargs})


@register_model
def explora_vitl_dino(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DinoV2 ViT-L/14 (304M), the source model of D-[L]-r64.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = _dino_args(embed_dim=1024, depth=24, num_heads=16)
    return _create('explora_vitl_dino', pretrained, **{**args, **kwargs})


@register_model
def explora_vitg_dino(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DinoV2 ViT-g/14 (1.1B) with a SwiGLU MLP.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    # DinoV2's SwiGLU hidden width is 4096; timm's packed SwiGLU takes twice that.
    args = _dino_args(
        embed_dim=1536,
        depth=40,
        num_heads=24,
        mlp_ratio=2.66667 * 2,
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
    )
    return _create('explora_vitg_dino', pretrained, **{**args, **kwargs})


@register_model
def explora_vitb_mae(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """MAE ViT-B/16 encoder.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = {'patch_size': 16, 'embed_dim': 768, 'depth': 12, 'num_heads': 12}
    return _create('explora_vitb_mae', pretrained, **{**args, **kwargs})


@register_model
def explora_vitl_mae(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """MAE ViT-L/16 encoder, the source model of M-ExPLoRA.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = {'patch_size': 16, 'embed_dim': 1024, 'depth': 24, 'num_heads': 16}
    return _create('explora_vitl_mae', pretrained, **{**args, **kwargs})
