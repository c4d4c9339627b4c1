"""ViT backbones for ExPLoRA, registered with timm.

``explora_vit{b,l,g}_dino`` are DinoV2 ViTs (patch 14, LayerScale, no registers)
and ``explora_vit{b,l}_mae`` MAE ViTs (patch 16). They are timm
``VisionTransformer`` models (:class:`SourceViT`) built with
``build_model_with_cfg``, so they carry a ``pretrained_cfg``, accept
``in_chans``, ``num_classes`` and ``img_size`` (224 by default), and support
``forward_intermediates``, ``features_only`` and gradient checkpointing.

A checkpoint's position table is resampled to the model's grid, and with
``dynamic_img_size=True`` to every input's grid, by the rule of the family's
source code (``pos_embed_resample``: ``'dinov2'`` for the DinoV2 models,
``'mae'`` for the MAE models, ``'timm'`` on request; see
:mod:`explora_geo.models.pos_embed`).

.. versionadded:: 0.1
"""

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SwiGLUPacked
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .checkpoints import convert_state_dict
from .pos_embed import PosEmbedResample, check_resample_rule, resample_pos_embed

__all__ = (
    'SourceViT',
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


class SourceViT(VisionTransformer):
    """A timm ``VisionTransformer`` that resamples positions like its source code.

    Only the resampling of the position table differs from timm's class: on
    load (:func:`~explora_geo.models.checkpoints.convert_state_dict`), in
    ``set_input_size`` and, with ``dynamic_img_size``, at every forward pass,
    the table is resampled with ``pos_embed_resample``.

    .. versionadded:: 0.1
    """

    def __init__(
        self, *args: Any, pos_embed_resample: PosEmbedResample = 'timm', **kwargs: Any
    ) -> None:
        """Initialize a new SourceViT instance.

        Args:
            *args: timm ``VisionTransformer`` arguments.
            pos_embed_resample: ``'dinov2'``, ``'mae'`` or ``'timm'``.
            **kwargs: timm ``VisionTransformer`` arguments.

        Raises:
            ValueError: If *pos_embed_resample* is unknown.
        """
        self.pos_embed_resample = check_resample_rule(pos_embed_resample)
        super().__init__(*args, **kwargs)

    def _resampled_pos_embed(self, table: Tensor, new: Any, old: Any) -> Tensor:
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        return resample_pos_embed(table, new, old, prefix, self.pos_embed_resample)

    def set_input_size(
        self,
        img_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = None,
    ) -> None:
        """Change the input size, resampling the position table by the source's rule.

        Args:
            img_size: New input size (default: the current one).
            patch_size: New patch size (default: the current one).
        """
        old_grid = self.patch_embed.grid_size
        old = None if self.pos_embed is None else self.pos_embed.detach().clone()
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        if old is not None and self.pos_embed is not None:
            grid = self.patch_embed.grid_size
            self.pos_embed = nn.Parameter(
                self._resampled_pos_embed(old, grid, old_grid),
                requires_grad=self.pos_embed.requires_grad,
            )

    def _pos_embed(self, x: Tensor) -> Tensor:
        if not self.dynamic_img_size or self.pos_embed is None:
            return super()._pos_embed(x)
        b, h, w, c = x.shape
        pos_embed = self._resampled_pos_embed(
            self.pos_embed, (h, w), self.patch_embed.grid_size
        )
        x = x.view(b, -1, c)
        prefix = [
            t.expand(b, -1, -1)
            for t in (self.cls_token, self.reg_token)
            if t is not None
        ]
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos_embed
        out: Tensor = self.pos_drop(x)
        return out


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SourceViT:
    out_indices = kwargs.pop('out_indices', 3)
    model: SourceViT = build_model_with_cfg(
        SourceViT,
        variant,
        pretrained,
        pretrained_filter_fn=convert_state_dict,
        feature_cfg={'out_indices': out_indices, 'feature_cls': 'getter'},
        **kwargs,
    )
    return model


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
    return _create('explora_vitb_dino', pretrained, **{**args, **kwargs})


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
    return _create('explora_vitl_dino', pretrained, **{**args, **kwargs})


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
    return _create('explora_vitg_dino', pretrained, **{**args, **kwargs})


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
    return _create('explora_vitb_mae', pretrained, **{**args, **kwargs})


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
    return _create('explora_vitl_mae', pretrained, **{**args, **kwargs})
