"""SatMAE's temporal ViT: several images of one place, with their dates.

All images share one patch embedding; the tokens of every image form one
sequence behind a class token. A token's encoding is a 2D sin-cos position
(``embed_dim - 384`` dims) concatenated with three 128-dim sin-cos encodings of
its image's acquisition time: ``year - 2002``, ``month - 1`` and ``hour``.

Inputs are ``x`` of shape ``(B, T, C, H, W)`` and ``timestamps`` of shape
``(B, T, 3)`` holding calendar values ``(year, month, hour)`` (e.g.
``(2016, 7, 14)``, as the fMoW datasets of this package return them); the
offsets are applied inside the model. ``T`` is free (SatMAE uses 3).

:class:`TemporalViT` is a timm ``VisionTransformer`` (blocks, norms, head and
pooling are timm's) with timm's call signatures plus the keyword
``timestamps``: ``model(x, timestamps=...)``. Its masked autoencoder is
:class:`~explora_geo.models.satmae_temporal_mae.TemporalMAE`; the registered
names are in :mod:`explora_geo.models.catalog`.

.. versionadded:: 0.1
"""

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from timm.models._features import feature_take_indices
from torch import Tensor

from .checkpoints import StateDict
from .convert import convert_temporal_state_dict
from .pos_embed import PosEmbedResample, sincos_1d
from .satmae_vit import SatMAEViT
from .vit import encode_tokens

__all__ = ('YEAR_OFFSET', 'TemporalViT', 'check_timestamps', 'time_encoding')

#: First year of fMoW; SatMAE encodes ``year - 2002``.
YEAR_OFFSET = 2002


def time_encoding(
    timestamps: Tensor, dim: int, year_offset: int = YEAR_OFFSET
) -> Tensor:
    """Sin-cos encoding of acquisition times, as SatMAE's temporal model.

    Args:
        timestamps: ``(..., 3)`` calendar values ``(year, month 1-12, hour 0-23)``.
        dim: Width of each of the three encodings (even).
        year_offset: Subtracted from the year (months are shifted by 1).

    Returns:
        ``(..., 3 * dim)`` float32: encodings of ``year - year_offset``,
        ``month - 1`` and ``hour``, concatenated.
    """
    shift = timestamps.new_tensor([year_offset, 1, 0])
    values = (timestamps - shift).float()
    parts = [sincos_1d(dim, values[..., i]) for i in range(3)]
    return torch.cat(parts, dim=-1).reshape(*timestamps.shape[:-1], 3 * dim)


def check_timestamps(timestamps: Tensor | None, x: Tensor, what: str) -> Tensor:
    """Validate timestamps against a ``(B, T, C, H, W)`` input.

    Args:
        timestamps: ``(B, T, 3)`` calendar values.
        x: The images.
        what: The model, for the message when *timestamps* is missing.

    Returns:
        *timestamps*.

    Raises:
        ValueError: If they are missing, of a wrong shape or not calendar
            dates (e.g. already offset years or 0-based months).
    """
    if timestamps is None:
        raise ValueError(
            f'{what} needs timestamps=(B, T, 3) calendar (year, month, hour), '
            'passed by keyword'
        )
    if x.ndim != 5:
        raise ValueError(
            f'expected images of shape (B, T, C, H, W), got {tuple(x.shape)}'
        )
    if timestamps.shape != (*x.shape[:2], 3):
        raise ValueError(
            f'timestamps must have shape (B, T, 3) = {(*x.shape[:2], 3)} of '
            f'(year, month, hour), got {tuple(timestamps.shape)}'
        )
    if torch.compiler.is_compiling() or timestamps.is_meta:
        return timestamps
    low = timestamps.amin(dim=(0, 1)).tolist()
    high = timestamps.amax(dim=(0, 1)).tolist()
    for i, (name, lo, hi) in enumerate(
        (('year', 1900, 2200), ('month', 1, 12), ('hour', 0, 23))
    ):
        if low[i] < lo or high[i] > hi:
            raise ValueError(
                f'timestamps {name} values span [{low[i]}, {high[i]}], expected '
                f'[{lo}, {hi}]: pass calendar (year, month, hour), e.g. (2016, 7, 14)'
            )
    return timestamps


class TemporalViT(SatMAEViT):
    """SatMAE's temporal ViT as a timm ``VisionTransformer``.

    Tokens are ordered image-major after the class token. With
    ``learnable_encodings`` (classifier) ``pos_embed`` is a parameter
    initialised with the sin-cos table; without (MAE encoder) it is a fixed
    buffer. The time encodings are always computed from the timestamps.

    ``forward(x, timestamps=...)`` classifies; ``forward_features(x,
    timestamps=...)`` returns the normed tokens ``(B, 1 + T*L, D)``;
    ``forward_head`` pools them (``'avg'``, SatMAE's fine-tuning default, or
    ``'token'``). Every forward method takes timm's arguments; without
    ``timestamps`` it raises a :class:`ValueError` saying so.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        *,
        time_embed_dim: int = 128,
        year_offset: int = YEAR_OFFSET,
        learnable_encodings: bool = True,
        global_pool: Literal['', 'avg', 'token', 'max', 'avgmax'] = 'avg',
        pos_embed_resample: PosEmbedResample = 'mae',
        **kwargs: Any,
    ) -> None:
        """Initialize a new TemporalViT instance.

        Args:
            img_size: Input size of each image (square).
            patch_size: Patch size.
            in_chans: Channels of each image.
            time_embed_dim: Width of each of the year/month/hour encodings.
            year_offset: Subtracted from the year before encoding.
            learnable_encodings: Train the position table (classifier) or keep
                it fixed (MAE).
            global_pool: Pooling for the head.
            pos_embed_resample: Rule for resampling a checkpoint's position
                table (``'mae'``: SatMAE's; or ``'dinov2'``, ``'timm'``).
            **kwargs: timm ``VisionTransformer`` arguments.

        Raises:
            ValueError: If the widths do not fit or an unsupported option is set.
        """
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            encoding=('time_embed_dim', time_embed_dim, 3),
            learnable_encodings=learnable_encodings,
            global_pool=global_pool,
            pos_embed_resample=pos_embed_resample,
            **kwargs,
        )
        self.time_embed_dim = time_embed_dim
        self.year_offset = year_offset

    def embed_tokens(self, x: Tensor, timestamps: Tensor | None) -> Tensor:
        """Patch-embed every image, add the encodings and prepend the class token.

        Args:
            x: ``(B, T, C, H, W)``.
            timestamps: ``(B, T, 3)`` calendar values.

        Returns:
            ``(B, 1 + T*L, D)`` tokens.

        Raises:
            ValueError: If the timestamps are missing or do not fit *x*.
        """
        timestamps = check_timestamps(timestamps, x, type(self).__name__)
        b, t = x.shape[:2]
        patches = self.patch_embed(x.flatten(0, 1)).unflatten(0, (b, t))
        time = time_encoding(timestamps, self.time_embed_dim, self.year_offset)
        pos = self.pos_embed[:, 1:]
        encodings = torch.cat(
            [
                pos.unsqueeze(1).expand(b, t, -1, -1),
                time.to(pos.dtype).unsqueeze(2).expand(-1, -1, pos.shape[1], -1),
            ],
            dim=-1,
        )
        # The class token: position row 0, zero time.
        cls_enc = torch.cat(
            [self.pos_embed[:, :1], pos.new_zeros(1, 1, time.shape[-1])], dim=-1
        )
        cls = (cast(Tensor, self.cls_token) + cls_enc).expand(b, -1, -1)
        return torch.cat([cls, (patches + encodings).flatten(1, 2)], dim=1)

    def forward_features(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        timestamps: Tensor | None = None,
    ) -> Tensor:
        """Encode a time series of images.

        Args:
            x: ``(B, T, C, H, W)``.
            attn_mask: Attention mask, as timm's.
            is_causal: Causal attention, as timm's.
            timestamps: ``(B, T, 3)`` calendar ``(year, month, hour)``.

        Returns:
            ``(B, 1 + T*L, D)`` normed tokens.
        """
        tokens = self.pos_drop(self.embed_tokens(x, timestamps))
        return encode_tokens(self, self.patch_drop(tokens), attn_mask, is_causal)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        timestamps: Tensor | None = None,
    ) -> Tensor:
        """Classify a time series of images.

        Args:
            x: ``(B, T, C, H, W)``.
            attn_mask: Attention mask, as timm's.
            is_causal: Causal attention, as timm's.
            timestamps: ``(B, T, 3)`` calendar ``(year, month, hour)``.

        Returns:
            ``(B, num_classes)`` logits (pooled features if ``num_classes=0``).
        """
        features = self.forward_features(x, attn_mask, is_causal, timestamps=timestamps)
        return self.forward_head(features)

    def convert_checkpoint(self, checkpoint: Mapping[str, object]) -> StateDict:
        """This model's state dict from a checkpoint (see :func:`~explora_geo.models.convert.convert_temporal_state_dict`).

        Args:
            checkpoint: A file's top-level mapping or a bare state dict.

        Returns:
            Tensors for ``load_state_dict``.
        """
        return convert_temporal_state_dict(checkpoint, self)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        timestamps: Tensor | None = None,
    ) -> Any:
        """Outputs of selected blocks, as timm's ``forward_intermediates``.

        Args:
            x: ``(B, T, C, H, W)``.
            indices: Blocks to return (last n if int, all if None).
            return_prefix_tokens: Also return the class tokens.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: ``'NCHW'`` (maps of ``T * D`` channels, the images'
                tokens of one location side by side) or ``'NLC'`` (patch tokens).
            intermediates_only: Return only the intermediates.
            output_dict: Return a dict as timm does.
            attn_mask: Attention mask, as timm's.
            is_causal: Causal attention, as timm's.
            timestamps: ``(B, T, 3)`` calendar values.

        Returns:
            The intermediates, ``(final tokens, intermediates)``, or timm's dict.
        """
        take, max_index = feature_take_indices(len(self.blocks), indices)
        tokens = self.norm_pre(self.embed_tokens(x, timestamps))
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        out, prefix = [], []
        for i, block in enumerate(blocks):
            if attn_mask is not None or is_causal:
                tokens = block(tokens, attn_mask=attn_mask, is_causal=is_causal)
            else:
                tokens = block(tokens)
            if i in take:
                y = self.norm(tokens) if norm else tokens
                prefix.append(y[:, :1])
                y = y[:, 1:]
                if output_fmt == 'NCHW':
                    h, w = self.patch_embed.grid_size
                    y = y.unflatten(1, (x.shape[1], h, w)).permute(0, 1, 4, 2, 3)
                    y = y.flatten(1, 2).contiguous()
                out.append(y)
        if output_dict:
            result: dict[str, Any] = {'image_intermediates': out}
            if return_prefix_tokens:
                result['image_intermediates_prefix'] = prefix
            if not intermediates_only:
                result['image_features'] = self.norm(tokens)
            return result
        items: list[Any] = (
            list(zip(out, prefix, strict=True)) if return_prefix_tokens else out
        )
        if intermediates_only:
            return items
        return self.norm(tokens), items
