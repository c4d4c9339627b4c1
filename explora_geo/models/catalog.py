"""Every model name this package registers, with timm and with :func:`create_mae`.

timm names (``timm.create_model`` / TorchGeo's tasks build them):

* ``explora_vit{b,l,g}_dino``: DinoV2 ViTs (patch 14, LayerScale, no
  registers), position tables resampled by DinoV2's rule;
* ``explora_vit{b,l}_mae``: MAE ViTs (patch 16), MAE's rule;
* ``explora_vit{b,l}_satmae_group``: SatMAE's group-channel ViT for 13-band
  Sentinel-2 (96 px, patch 8);
* ``explora_vitl_satmae_temporal``: SatMAE's temporal ViT (224 px, patch 16).

Each carries a ``pretrained_cfg`` whose URL comes from the weights enums of
:mod:`explora_geo.models.weights`; checkpoints are converted by
:mod:`explora_geo.models.convert`. The same names are registered as masked
autoencoders (encoder + decoder) for :func:`~explora_geo.models.mae.create_mae`.

.. versionadded:: 0.1
"""

from collections.abc import Callable
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SwiGLUPacked
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..sensors import FMOW_RGB, SENTINEL2
from . import convert, weights
from .mae import MaskedAutoencoderViT, mae_builder, register_mae
from .satmae_group import GroupChannelViT
from .satmae_group_mae import GroupChannelMAE
from .satmae_temporal import TemporalViT
from .satmae_temporal_mae import TemporalMAE
from .vit import SourceViT

__all__ = (
    'explora_vitb_dino',
    'explora_vitb_mae',
    'explora_vitb_satmae_group',
    'explora_vitg_dino',
    'explora_vitl_dino',
    'explora_vitl_mae',
    'explora_vitl_satmae_group',
    'explora_vitl_satmae_temporal',
)


def _cfg(url: str = '', **kwargs: Any) -> dict[str, Any]:
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


# SatMAE's normalisation of 13-band Sentinel-2 input as a mean and std:
# clip((x - (mu - 2 sd)) / (4 sd), 0, 1) without the clip.
_sentinel_cfg: dict[str, Any] = {
    'input_size': (len(SENTINEL2.bands), 96, 96),
    'mean': tuple(
        m - 2 * s for m, s in zip(SENTINEL2.mean, SENTINEL2.std, strict=True)
    ),
    'std': tuple(4 * s for s in SENTINEL2.std),
    # The group projections never need timm's RGB input-conv adaptation.
    'first_conv': None,
}

default_cfgs = generate_default_cfgs(
    {
        # The first tag of a model is its default for pretrained=True.
        'explora_vitl_dino.fmow_rgb': _cfg(
            weights.ExPLoRAViTL14DINOv2Weights.FMOW_RGB.url
        ),
        'explora_vitl_dino.lvd142m': _cfg(
            weights.ExPLoRAViTL14DINOv2Weights.DINOV2_LVD142M.url
        ),
        'explora_vitb_dino.fmow_rgb': _cfg(
            weights.ExPLoRAViTB14DINOv2Weights.FMOW_RGB.url
        ),
        'explora_vitb_dino.lvd142m': _cfg(
            weights.ExPLoRAViTB14DINOv2Weights.DINOV2_LVD142M.url
        ),
        'explora_vitg_dino.lvd142m': _cfg(
            weights.ExPLoRAViTG14DINOv2Weights.DINOV2_LVD142M.url
        ),
        'explora_vitl_mae.in1k': _cfg(weights.ExPLoRAViTL16MAEWeights.MAE_IN1K.url),
        'explora_vitl_mae.in1k_pixel': _cfg(
            weights.ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL.url
        ),
        'explora_vitb_mae.in1k': _cfg(weights.ExPLoRAViTB16MAEWeights.MAE_IN1K.url),
        'explora_vitb_mae.in1k_pixel': _cfg(
            weights.ExPLoRAViTB16MAEWeights.MAE_IN1K_PIXEL.url
        ),
        'explora_vitl_satmae_group.fmow_sentinel': _cfg(
            weights.ExPLoRAViTL8SatMAEGroupWeights.FMOW_SENTINEL.url, **_sentinel_cfg
        ),
        'explora_vitl_satmae_group.satmae_fmow_sentinel': _cfg(
            weights.ExPLoRAViTL8SatMAEGroupWeights.SATMAE_FMOW_SENTINEL.url,
            **_sentinel_cfg,
        ),
        'explora_vitb_satmae_group.untrained': _cfg(**_sentinel_cfg),
        'explora_vitl_satmae_temporal.untrained': _cfg(
            mean=tuple(m / FMOW_RGB.scale for m in FMOW_RGB.mean),
            std=tuple(s / FMOW_RGB.scale for s in FMOW_RGB.std),
        ),
    }
)


def _create[M: nn.Module](
    cls: Callable[..., M],
    variant: str,
    pretrained: bool,
    filter_fn: Callable[..., Any],
    **kwargs: Any,
) -> M:
    out_indices = kwargs.pop('out_indices', 3)
    model: M = build_model_with_cfg(
        cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg={'out_indices': out_indices, 'feature_cls': 'getter'},
        **kwargs,
    )
    return model


def _create_vit(variant: str, pretrained: bool, **kwargs: Any) -> SourceViT:
    return _create(SourceViT, variant, pretrained, convert.convert_state_dict, **kwargs)


def _create_group(variant: str, pretrained: bool, **kwargs: Any) -> GroupChannelViT:
    return _create(
        GroupChannelViT, variant, pretrained, convert.convert_group_state_dict, **kwargs
    )


def _dino_args(**kwargs: Any) -> dict[str, Any]:
    return {
        'patch_size': 14,
        'init_values': 1e-5,
        'pos_embed_resample': 'dinov2',
        **kwargs,
    }


def _mae_args(**kwargs: Any) -> dict[str, Any]:
    return {'patch_size': 16, 'pos_embed_resample': 'mae', **kwargs}


@register_model
def explora_vitb_dino(pretrained: bool = False, **kwargs: Any) -> SourceViT:
    """DinoV2 ViT-B/14 (86M), the source model of ViT-B ExPLoRA.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = _dino_args(embed_dim=768, depth=12, num_heads=12)
    return _create_vit('explora_vitb_dino', pretrained, **{**args, **kwargs})


@register_model
def explora_vitl_dino(pretrained: bool = False, **kwargs: Any) -> SourceViT:
    """DinoV2 ViT-L/14 (304M), the source model of D-[L]-r64.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = _dino_args(embed_dim=1024, depth=24, num_heads=16)
    return _create_vit('explora_vitl_dino', pretrained, **{**args, **kwargs})


@register_model
def explora_vitg_dino(pretrained: bool = False, **kwargs: Any) -> SourceViT:
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
    return _create_vit('explora_vitg_dino', pretrained, **{**args, **kwargs})


@register_model
def explora_vitb_mae(pretrained: bool = False, **kwargs: Any) -> SourceViT:
    """MAE ViT-B/16 encoder.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = _mae_args(embed_dim=768, depth=12, num_heads=12)
    return _create_vit('explora_vitb_mae', pretrained, **{**args, **kwargs})


@register_model
def explora_vitl_mae(pretrained: bool = False, **kwargs: Any) -> SourceViT:
    """MAE ViT-L/16 encoder, the source model of M-ExPLoRA.

    Args:
        pretrained: Load the default pretrained weights.
        **kwargs: timm ``VisionTransformer`` arguments.

    Returns:
        The model.
    """
    args = _mae_args(embed_dim=1024, depth=24, num_heads=16)
    return _create_vit('explora_vitl_mae', pretrained, **{**args, **kwargs})


@register_model
def explora_vitl_satmae_group(
    pretrained: bool = False, **kwargs: Any
) -> GroupChannelViT:
    """SatMAE group-channel ViT-L/8 for 13-band Sentinel-2 (96 px, 3 groups, 432 tokens).

    Args:
        pretrained: Load the default pretrained weights (ExPLoRA M-[1,L]-r32 on
            fMoW-Sentinel).
        **kwargs: :class:`GroupChannelViT` arguments.

    Returns:
        The model.
    """
    args = {'embed_dim': 1024, 'depth': 24, 'num_heads': 16}
    return _create_group('explora_vitl_satmae_group', pretrained, **{**args, **kwargs})


@register_model
def explora_vitb_satmae_group(
    pretrained: bool = False, **kwargs: Any
) -> GroupChannelViT:
    """SatMAE group-channel ViT-B/8 for 13-band Sentinel-2 (no released weights).

    Args:
        pretrained: Must be False (no weights are published for this size).
        **kwargs: :class:`GroupChannelViT` arguments.

    Returns:
        The model.
    """
    args = {'embed_dim': 768, 'depth': 12, 'num_heads': 12}
    return _create_group('explora_vitb_satmae_group', pretrained, **{**args, **kwargs})


@register_model
def explora_vitl_satmae_temporal(
    pretrained: bool = False, **kwargs: Any
) -> TemporalViT:
    """SatMAE temporal ViT-L/16 (224 px, 384 time dims); call as ``model(x, timestamps=...)``.

    Args:
        pretrained: Must be False (load weights with
            :func:`~explora_geo.models.weights.load_weights`).
        **kwargs: :class:`TemporalViT` arguments.

    Returns:
        The model.
    """
    args = {'embed_dim': 1024, 'depth': 24, 'num_heads': 16}
    return _create(
        TemporalViT,
        'explora_vitl_satmae_temporal',
        pretrained,
        convert.convert_temporal_state_dict,
        **{**args, **kwargs},
    )


# Masked autoencoders ---------------------------------------------------------

# SatMAE's encoders inside an MAE: fixed sin-cos encodings, final norm kept.
_SATMAE_ENCODER = {'global_pool': 'token', 'learnable_encodings': False}

for _name, _weights in (
    ('explora_vitb_mae', weights.ExPLoRAViTB16MAEWeights.MAE_IN1K_PIXEL),
    ('explora_vitl_mae', weights.ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL),
):
    register_mae(_name)(mae_builder(MaskedAutoencoderViT, _name, _weights))
# ExPLoRA starts the multispectral and temporal MAEs from the RGB pixel MAE.
for _name, _weights in (
    ('explora_vitl_satmae_group', weights.ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL),
    ('explora_vitb_satmae_group', weights.ExPLoRAViTB16MAEWeights.MAE_IN1K_PIXEL),
):
    register_mae(_name)(
        mae_builder(
            GroupChannelMAE, _name, _weights, _SATMAE_ENCODER, ('spatial_mask',)
        )
    )
register_mae('explora_vitl_satmae_temporal')(
    mae_builder(
        TemporalMAE,
        'explora_vitl_satmae_temporal',
        weights.ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL,
        _SATMAE_ENCODER,
        ('same_mask',),
    )
)
