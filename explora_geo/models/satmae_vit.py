"""What SatMAE's group-channel and temporal ViTs share.

Both are timm ``VisionTransformer`` models whose tokens concatenate a fixed 2D
sin-cos position table (``pos_embed``, narrower than the tokens) with other
sin-cos encodings (band group, acquisition time), behind one class token.
:class:`SatMAEViT` holds the checks, the tables and their initialisation; the
subclasses add their encodings and token layout.

.. versionadded:: 0.1
"""

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .pos_embed import PosEmbedResample, position_dims, sincos_pos_embed_2d
from .vit import SourceViT

__all__ = ('SatMAEViT',)


class SatMAEViT(SourceViT):
    """Base of SatMAE's ViTs: a class token and a narrow sin-cos position table.

    With ``learnable_encodings`` (classifiers, as in SatMAE's fine-tuning
    models) the encodings are parameters initialised with their sin-cos
    values; without (MAE encoders) they are fixed buffers. Either way the
    state-dict keys are SatMAE's.

    .. versionadded:: 0.1
    """

    pos_embed: Tensor  # type: ignore[assignment]

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        *,
        encoding: tuple[str, int, int],
        learnable_encodings: bool = True,
        global_pool: Literal['', 'avg', 'token', 'max', 'avgmax'] = 'avg',
        pos_embed_resample: PosEmbedResample = 'mae',
        **kwargs: Any,
    ) -> None:
        """Initialize a new SatMAEViT instance.

        Args:
            img_size: Input size (square).
            patch_size: Patch size.
            in_chans: Input channels.
            encoding: ``(argument name, width, count)`` of the encodings that
                share the tokens with the position table.
            learnable_encodings: Train the encodings (classifier) or keep them
                fixed (MAE).
            global_pool: Pooling for the head.
            pos_embed_resample: Rule for resampling a checkpoint's position
                table (``'mae'``: SatMAE's; or ``'dinov2'``, ``'timm'``).
            **kwargs: timm ``VisionTransformer`` arguments.

        Raises:
            ValueError: If the widths do not fit, the input is not square or an
                unsupported option is set.
        """
        for unsupported in ('dynamic_img_size', 'no_embed_class', 'reg_tokens'):
            if kwargs.pop(unsupported, False):
                raise ValueError(
                    f'{unsupported} is not supported by {type(self).__name__}'
                )
        if kwargs.pop('class_token', True) is not True:
            raise ValueError(f'{type(self).__name__} needs its class token')
        name, width, count = encoding
        pos_dim = position_dims(
            'embed_dim', kwargs.get('embed_dim', 768), name, width, count
        )
        kwargs.pop('pos_embed', None)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            global_pool=global_pool,
            pos_embed='',
            pos_embed_resample=pos_embed_resample,
            **kwargs,
        )
        grid = self.patch_embed.grid_size
        if grid[0] != grid[1]:
            raise ValueError(
                f'{type(self).__name__} needs a square input, got {img_size}'
            )
        self.learnable_encodings = learnable_encodings
        del self.pos_embed  # timm's plain attribute (None); replaced by the table
        self.add_encoding('pos_embed', sincos_pos_embed_2d(pos_dim, grid[0]))

    def add_encoding(self, name: str, table: Tensor) -> None:
        """Register an encoding table: a parameter if learnable, else a buffer.

        Args:
            name: Attribute (and state-dict key) name.
            table: Initial values (moved to the model's device).
        """
        assert self.cls_token is not None
        table = table.to(self.cls_token.device)
        if self.learnable_encodings:
            setattr(self, name, nn.Parameter(table))
        else:
            self.register_buffer(name, table)

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        """Initialise as timm does, then refill the sin-cos tables.

        Args:
            mode: timm init mode.
            needs_reset: Reset modules that have ``reset_parameters``.
        """
        super().init_weights(mode, needs_reset)
        if getattr(self, 'pos_embed', None) is not None:
            self.reset_encodings()

    @torch.no_grad()
    def reset_encodings(self) -> None:
        """Fill the position table with its sin-cos values."""
        table = sincos_pos_embed_2d(
            self.pos_embed.shape[-1], self.patch_embed.grid_size[0]
        )
        self.pos_embed.copy_(table.to(self.pos_embed.device))

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: build a new model with the wanted ``img_size``.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot change its input size; build a new model '
            'with img_size=... (checkpoints are resampled on load)'
        )
