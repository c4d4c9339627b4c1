"""What SatMAE's group-channel and temporal ViTs share.

Both are timm ``VisionTransformer`` models whose tokens concatenate a fixed 2D
sin-cos position table (``pos_embed``, narrower than the tokens) with other
sin-cos encodings (band group, acquisition time), behind one class token, and
whose tokens come in groups of one full patch grid (band groups, images).
:class:`SatMAEViT` holds the checks, the tables and their initialisation and
timm's forward methods (with timm's signatures plus model-specific keyword
inputs such as ``timestamps``); a subclass provides :meth:`SatMAEViT.embed_tokens`.

.. versionadded:: 0.1
"""

from typing import Any, Literal

import torch
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .pos_embed import PosEmbedResample, position_dims, sincos_pos_embed_2d
from .vit import SourceViT, encode_tokens

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

    def embed_tokens(self, x: Tensor, **inputs: Any) -> Tensor:
        """Patch-embed *x*, add the encodings and prepend the class token.

        Args:
            x: The input.
            **inputs: Model-specific inputs (e.g. ``timestamps``).

        Returns:
            ``(B, 1 + n*L, D)`` tokens: class token, then ``n`` groups of the
            ``L`` patches of the grid.
        """
        raise NotImplementedError

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """Rearrange grouped patch tokens into a feature map.

        Args:
            tokens: ``(B, n*L, D)`` patch tokens (no class token).

        Returns:
            ``(B, n*D, H, W)``; channels ``g*D:(g+1)*D`` hold group g, so the
            tokens of one location sit side by side.
        """
        h, w = self.patch_embed.grid_size
        return (
            tokens.unflatten(1, (-1, h, w))
            .permute(0, 1, 4, 2, 3)
            .flatten(1, 2)
            .contiguous()
        )

    def forward_features(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        **inputs: Any,
    ) -> Tensor:
        """Encode *x*.

        Args:
            x: The input.
            attn_mask: Attention mask, as timm's.
            is_causal: Causal attention, as timm's.
            **inputs: Model-specific inputs (e.g. ``timestamps``).

        Returns:
            ``(B, 1 + n*L, D)`` normed tokens.
        """
        tokens = self.pos_drop(self.embed_tokens(x, **inputs))
        return encode_tokens(self, self.patch_drop(tokens), attn_mask, is_causal)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Classify *x*: :meth:`forward_features` then timm's ``forward_head``.

        Args:
            x: The input.
            *args: :meth:`forward_features` arguments.
            **kwargs: :meth:`forward_features` arguments (e.g. ``timestamps``).

        Returns:
            ``(B, num_classes)`` logits (pooled features if ``num_classes=0``).
        """
        return self.forward_head(self.forward_features(x, *args, **kwargs))

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
        **inputs: Any,
    ) -> Any:
        """Outputs of selected blocks, as timm's ``forward_intermediates``.

        Args:
            x: The input.
            indices: Blocks to return (last n if int, all if None).
            return_prefix_tokens: Also return the class tokens.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: ``'NCHW'`` (maps of ``n * D`` channels, see
                :meth:`tokens_to_map`) or ``'NLC'`` (patch tokens).
            intermediates_only: Return only the intermediates.
            output_dict: Return a dict as timm does.
            attn_mask: Attention mask, as timm's.
            is_causal: Causal attention, as timm's.
            **inputs: Model-specific inputs (e.g. ``timestamps``).

        Returns:
            The intermediates, ``(final tokens, intermediates)``, or timm's dict.
        """
        take, max_index = feature_take_indices(len(self.blocks), indices)
        tokens = self.pos_drop(self.embed_tokens(x, **inputs))
        tokens = self.norm_pre(self.patch_drop(tokens))
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        out, prefix = [], []
        for i, block in enumerate(blocks):
            if attn_mask is not None or is_causal:
                tokens = block(tokens, attn_mask=attn_mask, is_causal=is_causal)
            elif self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if i in take:
                y = self.norm(tokens) if norm else tokens
                prefix.append(y[:, :1])
                out.append(
                    self.tokens_to_map(y[:, 1:]) if output_fmt == 'NCHW' else y[:, 1:]
                )
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

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: build a new model with the wanted ``img_size``.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot change its input size; build a new model '
            'with img_size=... (checkpoints are resampled on load)'
        )
