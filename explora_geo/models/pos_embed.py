"""Position tables: fixed sin-cos encodings and resampling to another grid.

A checkpoint's position table is resampled when the model's patch grid differs
from the grid it was trained on, at load time and, for models built with
``dynamic_img_size``, at every forward pass on another input size. Each source
family does this its own way, and features match the source's only when its
own rule is used:

* ``'dinov2'``: DinoV2's ``interpolate_pos_encoding`` (its hub models and its
  training code at run time): bicubic with ``scale_factor = (new + 0.1) / old``
  per side, no antialiasing, computed in float32.
* ``'mae'``: ``interpolate_pos_embed`` of MAE and SatMAE (from DeiT), also what
  the ExPLoRA DinoV2 training code uses when it loads the source weights:
  bicubic to the new size, ``align_corners=False``, no antialiasing.
* ``'timm'``: :func:`timm.layers.resample_abs_pos_embed` with its defaults
  (bicubic with antialiasing).

Prefix rows (class token) are never resampled.

.. versionadded:: 0.1
"""

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from lightly.models import utils as lightly_utils
from timm.layers import resample_abs_pos_embed
from torch import Tensor
from torchgeo.models.scale_mae import get_1d_sincos_pos_embed_from_grid_torch

__all__ = (
    'DINOV2_INTERPOLATE_OFFSET',
    'PosEmbedResample',
    'check_resample_rule',
    'position_dims',
    'resample_pos_embed',
    'sincos_1d',
    'sincos_pos_embed_2d',
)

#: How a position table is brought to another grid (see the module docstring).
type PosEmbedResample = Literal['dinov2', 'mae', 'timm']

#: DinoV2's offset added to the new grid side before computing the scale factor.
DINOV2_INTERPOLATE_OFFSET = 0.1


def check_resample_rule(rule: str) -> PosEmbedResample:
    """Validate a resampling rule name.

    Args:
        rule: ``'dinov2'``, ``'mae'`` or ``'timm'``.

    Returns:
        *rule*.

    Raises:
        ValueError: If *rule* is not one of them.
    """
    known = get_args(PosEmbedResample.__value__)
    if rule not in known:
        raise ValueError(
            f'unknown position-table resampling {rule!r}; expected one of {list(known)}'
        )
    return rule  # type: ignore[return-value]


def _grid(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def resample_pos_embed(
    pos_embed: Tensor,
    new_size: int | Sequence[int],
    old_size: int | Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    rule: PosEmbedResample = 'mae',
) -> Tensor:
    """Resample a ``(1, prefix + H*W, D)`` position table to another grid.

    Args:
        pos_embed: The table, prefix rows first, then the grid row-major.
        new_size: Target grid ``(H', W')`` (or one side of a square).
        old_size: The table's grid (default: square, from its length).
        num_prefix_tokens: Rows before the grid (kept as they are).
        rule: ``'dinov2'``, ``'mae'`` or ``'timm'`` (module docstring).

    Returns:
        ``(1, prefix + H'*W', D)`` in the dtype of *pos_embed*; *pos_embed*
        itself when the grids are equal.

    Raises:
        ValueError: If the table does not hold ``old_size`` or the rule is unknown.
    """
    check_resample_rule(rule)
    new = _grid(new_size)
    num_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = round(num_grid**0.5)
        old = (side, side)
    else:
        old = _grid(old_size)
    if old[0] * old[1] != num_grid:
        raise ValueError(
            f'position table of {num_grid} grid rows does not hold a {old[0]}x{old[1]} '
            'grid'
        )
    if new == old:
        return pos_embed
    if rule == 'timm':
        return resample_abs_pos_embed(
            pos_embed,
            new_size=list(new),
            old_size=list(old),
            num_prefix_tokens=num_prefix_tokens,
        )
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    image = grid.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    if rule == 'dinov2':
        scale = tuple(
            (n + DINOV2_INTERPOLATE_OFFSET) / o for n, o in zip(new, old, strict=True)
        )
        out = F.interpolate(image, scale_factor=scale, mode='bicubic', antialias=False)
        if tuple(out.shape[-2:]) != new:
            raise ValueError(
                f'DinoV2 interpolation of a {old} grid gave {tuple(out.shape[-2:])}, '
                f'not {new}'
            )
    else:
        out = F.interpolate(
            image, size=new, mode='bicubic', align_corners=False, antialias=False
        )
    out = out.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim)
    return torch.cat([prefix, out.to(pos_embed.dtype)], dim=1)


def position_dims(
    width_name: str, width: int, name: str, dim: int, copies: int = 1
) -> int:
    """Width left for the 2D position table when *copies* encodings of *dim* share the tokens.

    SatMAE's tokens concatenate a 2D sin-cos position table with other sin-cos
    encodings (band group, acquisition time).

    Args:
        width_name: Name of the token width argument, for the error message.
        width: Token width.
        name: Name of the other encodings' width argument.
        dim: Width of each other encoding.
        copies: Number of other encodings.

    Returns:
        ``width - copies * dim``.

    Raises:
        ValueError: If that is not a positive multiple of 4 or *dim* is odd.
    """
    pos_dim = width - copies * dim
    if pos_dim <= 0 or pos_dim % 4 or dim % 2:
        raise ValueError(
            f'{width_name}={width} and {name}={dim} leave {pos_dim} position dims; '
            f'need a positive multiple of 4 (and an even {name})'
        )
    return pos_dim


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """MAE's 1D sin-cos encoding ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-2k/dim)``.

    Computed on the device of *positions* (torchgeo's implementation), so it
    serves both fixed tables and per-sample values such as timestamps.

    Args:
        dim: Encoding width (even).
        positions: Positions of any shape.

    Returns:
        ``(positions.numel(), dim)`` float32 encodings.
    """
    return get_1d_sincos_pos_embed_from_grid_torch(dim, positions.float())


def sincos_pos_embed_2d(
    embed_dim: int, grid_size: int, num_prefix_tokens: int = 1
) -> Tensor:
    """MAE's fixed 2D sin-cos position table (zeros for the prefix tokens).

    Args:
        embed_dim: Width of the table (even).
        grid_size: Patches per side.
        num_prefix_tokens: Zero rows prepended (class token).

    Returns:
        ``(1, num_prefix_tokens + grid_size**2, embed_dim)`` float32 tensor.
    """
    table = lightly_utils.get_2d_sine_cosine_positional_embedding(
        embed_dim, grid_size, num_prefix_tokens=num_prefix_tokens
    )
    return torch.from_numpy(table).float().unsqueeze(0)
