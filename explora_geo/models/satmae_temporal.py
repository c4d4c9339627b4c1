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
from typing import Any, cast

import torch
from torch import Tensor

from .checkpoints import StateDict
from .convert import convert_temporal_state_dict
from .pos_embed import sincos_1d
from .satmae_vit import SatMAEViT

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
        **kwargs: Any,
    ) -> None:
        """Initialize a new TemporalViT instance.

        Args:
            img_size: Input size of each image (square).
            patch_size: Patch size.
            in_chans: Channels of each image.
            time_embed_dim: Width of each of the year/month/hour encodings.
            year_offset: Subtracted from the year before encoding.
            **kwargs: :class:`~explora_geo.models.satmae_vit.SatMAEViT` arguments
                (``learnable_encodings``, ``global_pool``, ``pos_embed_resample``)
                and timm ``VisionTransformer`` ones.

        Raises:
            ValueError: If the widths do not fit or an unsupported option is set.
        """
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            encoding=('time_embed_dim', time_embed_dim, 3),
            **kwargs,
        )
        self.time_embed_dim = time_embed_dim
        self.year_offset = year_offset

    def embed_tokens(self, x: Tensor, **inputs: Any) -> Tensor:
        """Patch-embed every image, add the encodings and prepend the class token.

        Args:
            x: ``(B, T, C, H, W)``.
            **inputs: ``timestamps``: ``(B, T, 3)`` calendar values.

        Returns:
            ``(B, 1 + T*L, D)`` tokens, image-major.

        Raises:
            ValueError: If the timestamps are missing or do not fit *x*.
            TypeError: If other inputs are given.
        """
        timestamps = check_timestamps(
            inputs.pop('timestamps', None), x, type(self).__name__
        )
        if inputs:
            raise TypeError(
                f'{type(self).__name__} takes timestamps besides the images, got '
                f'{sorted(inputs)}'
            )
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

    def convert_checkpoint(self, checkpoint: Mapping[str, object]) -> StateDict:
        """This model's state dict from a checkpoint (see :func:`~explora_geo.models.convert.convert_temporal_state_dict`).

        Args:
            checkpoint: A file's top-level mapping or a bare state dict.

        Returns:
            Tensors for ``load_state_dict``.
        """
        return convert_temporal_state_dict(checkpoint, self)
