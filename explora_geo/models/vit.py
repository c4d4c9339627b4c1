"""The timm ViT every model of this package builds on, and its block loop.

:class:`SourceViT` is a timm ``VisionTransformer`` that resamples its position
table by the rule of its source code (``pos_embed_resample``: ``'dinov2'``,
``'mae'`` or ``'timm'``, see :mod:`explora_geo.models.pos_embed`): on load, in
``set_input_size`` and, with ``dynamic_img_size=True``, at every forward pass.
The DinoV2 and MAE families (``explora_vit{b,l,g}_dino``, ``explora_vit{b,l}_mae``)
are registered as ``SourceViT`` in :mod:`explora_geo.models.catalog`.

:func:`encode_tokens` runs a ViT's blocks over tokens that are ready
(embedded, encoded, masked): the one block loop used by the masked
autoencoders, SatMAE's temporal ViT and DinoV2's masked student.

.. versionadded:: 0.1
"""

from typing import Any

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .pos_embed import PosEmbedResample, check_resample_rule, resample_pos_embed

__all__ = ('SourceViT', 'encode_tokens')


def encode_tokens(
    vit: nn.Module,
    tokens: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """``norm_pre``, the blocks and the final ``norm`` of a timm ViT.

    The blocks run under gradient checkpointing when the ViT has it enabled
    (``set_grad_checkpointing``) and gradients are being recorded.

    Args:
        vit: A timm-style ViT (``norm_pre``, ``blocks``, ``norm``).
        tokens: ``(B, N, D)`` tokens, encodings added, prefix tokens first.
        attn_mask: Attention mask passed to every block (timm's).
        is_causal: Causal attention in every block (timm's).

    Returns:
        ``(B, N, D)`` normed tokens.
    """
    model: Any = vit
    tokens = model.norm_pre(tokens)
    if attn_mask is not None or is_causal:
        for block in model.blocks:
            tokens = block(tokens, attn_mask=attn_mask, is_causal=is_causal)
    elif (
        getattr(model, 'grad_checkpointing', False)
        and torch.is_grad_enabled()
        and not torch.jit.is_scripting()
    ):
        tokens = checkpoint_seq(model.blocks, tokens)
    else:
        tokens = model.blocks(tokens)
    out: Tensor = model.norm(tokens)
    return out


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
