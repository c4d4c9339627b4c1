"""SatMAE temporal ViT: several images of one place, with their dates, and its MAE.

All images share one patch embedding; the tokens of every image form one
sequence behind a class token. A token's encoding is a 2D sin-cos position
(``embed_dim - 384`` dims) concatenated with three 128-dim sin-cos encodings of
its image's acquisition time: ``year - 2002``, ``month - 1`` and ``hour``.

Inputs are ``x`` of shape ``(B, T, C, H, W)`` and ``timestamps`` of shape
``(B, T, 3)`` holding calendar values ``(year, month, hour)`` (e.g.
``(2016, 7, 14)``, as the fMoW datasets of this package return them); the
offsets are applied inside the model. ``T`` is free (SatMAE uses 3).

:class:`TemporalViT` is a timm ``VisionTransformer`` (blocks, norms, head and
pooling are timm's) registered as ``explora_vitl_satmae_temporal`` (224 px,
patch 16); call it as ``model(x, timestamps)``. :class:`TemporalMAE` is its
masked autoencoder, registered for :func:`~explora_geo.models.mae.create_mae`
under the same name.

.. versionadded:: 0.1
"""

from collections.abc import Mapping
from typing import Any, Literal, cast

import timm
import torch
from lightly.models import utils as lightly_utils
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
)
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .checkpoints import StateDict, fit_pos_embed, load_into
from .mae import (
    MAEOutput,
    MaskedAutoencoder,
    RandomMask,
    build_decoder_blocks,
    masked_reconstruction_loss,
    random_masking,
    register_mae,
    sincos_pos_embed_2d,
    unshuffle_tokens,
)
from .pos_embed import PosEmbedResample, check_resample_rule
from .satmae_group import (
    encoder_state_dict,
    fit_pooling_keys,
    normalize_decoder_keys,
    sincos_1d,
)
from .weights import ExPLoRAViTL16MAEWeights

__all__ = (
    'TemporalMAE',
    'TemporalViT',
    'convert_temporal_state_dict',
    'explora_vitl_satmae_temporal',
    'load_temporal_checkpoint',
    'mae_vitl_satmae_temporal',
    'time_encoding',
)

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


def check_timestamps(timestamps: Tensor, x: Tensor) -> None:
    """Validate timestamps against a ``(B, T, C, H, W)`` input.

    Args:
        timestamps: ``(B, T, 3)`` calendar values.
        x: The images.

    Raises:
        ValueError: On a wrong shape or values that are not calendar dates
            (e.g. already offset years or 0-based months).
    """
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
        return
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


class TemporalViT(VisionTransformer):
    """SatMAE's temporal ViT as a timm ``VisionTransformer``.

    Tokens are ordered image-major after the class token. With
    ``learnable_encodings`` (classifier) ``pos_embed`` is a parameter
    initialised with the sin-cos table; without (MAE encoder) it is a fixed
    buffer. The time encodings are always computed from the timestamps.

    ``forward(x, timestamps)`` classifies; ``forward_features(x, timestamps)``
    returns the normed tokens ``(B, 1 + T*L, D)``; ``forward_head`` pools them
    (``'avg'``, SatMAE's fine-tuning default, or ``'token'``).

    .. versionadded:: 0.1
    """

    pos_embed: Tensor  # type: ignore[assignment]

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
        self.pos_embed_resample = check_resample_rule(pos_embed_resample)
        for unsupported in ('dynamic_img_size', 'no_embed_class', 'reg_tokens'):
            if kwargs.pop(unsupported, False):
                raise ValueError(
                    f'{unsupported} is not supported by {type(self).__name__}'
                )
        if kwargs.pop('class_token', True) is not True:
            raise ValueError(f'{type(self).__name__} needs its class token')
        embed_dim = kwargs.get('embed_dim', 768)
        pos_dim = embed_dim - 3 * time_embed_dim
        if pos_dim <= 0 or pos_dim % 4 or time_embed_dim % 2:
            raise ValueError(
                f'embed_dim={embed_dim} and time_embed_dim={time_embed_dim} leave '
                f'{pos_dim} position dims; need a positive multiple of 4'
            )
        kwargs.pop('pos_embed', None)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            global_pool=global_pool,
            pos_embed='',
            **kwargs,
        )
        grid = self.patch_embed.grid_size
        if grid[0] != grid[1]:
            raise ValueError(
                f'{type(self).__name__} needs a square input, got {img_size}'
            )
        self.time_embed_dim = time_embed_dim
        self.year_offset = year_offset
        self.learnable_encodings = learnable_encodings
        device = cast(Tensor, self.cls_token).device
        pos = sincos_pos_embed_2d(pos_dim, grid[0]).to(device)
        del self.pos_embed  # timm's plain attribute (None); replaced by the table
        if learnable_encodings:
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer('pos_embed', pos)

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        """Initialise as timm does, then refill the sin-cos position table.

        Args:
            mode: timm init mode.
            needs_reset: Reset modules that have ``reset_parameters``.
        """
        super().init_weights(mode, needs_reset)
        if getattr(self, 'pos_embed', None) is not None:
            with torch.no_grad():
                table = sincos_pos_embed_2d(
                    self.pos_embed.shape[-1], self.patch_embed.grid_size[0]
                )
                self.pos_embed.copy_(table.to(self.pos_embed.device))

    def cls_encoding(self) -> Tensor:
        """The class token's encoding: position row 0, zero time (``(1, 1, D)``)."""
        zeros = self.pos_embed.new_zeros(1, 1, 3 * self.time_embed_dim)
        return torch.cat([self.pos_embed[:, :1], zeros], dim=-1)

    def patch_encodings(self, timestamps: Tensor) -> Tensor:
        """The encodings of the patch tokens.

        Args:
            timestamps: ``(B, T, 3)`` calendar values.

        Returns:
            ``(B, T, L, D)``: position, then year/month/hour encodings.
        """
        b, t = timestamps.shape[:2]
        time = time_encoding(timestamps, self.time_embed_dim, self.year_offset)
        pos = self.pos_embed[:, 1:]
        return torch.cat(
            [
                pos.unsqueeze(1).expand(b, t, -1, -1),
                time.to(pos.dtype).unsqueeze(2).expand(-1, -1, pos.shape[1], -1),
            ],
            dim=-1,
        )

    def embed(self, x: Tensor, timestamps: Tensor) -> Tensor:
        """Patch-embed every image and add the encodings (no class token).

        Args:
            x: ``(B, T, C, H, W)``.
            timestamps: ``(B, T, 3)`` calendar values.

        Returns:
            ``(B, T*L, D)`` tokens.
        """
        check_timestamps(timestamps, x)
        b, t = x.shape[:2]
        tokens = self.patch_embed(x.flatten(0, 1)).unflatten(0, (b, t))
        return (tokens + self.patch_encodings(timestamps)).flatten(1, 2)

    def prepend_cls(self, tokens: Tensor) -> Tensor:
        """Prepend the encoded class token.

        Args:
            tokens: ``(B, N, D)`` patch tokens.

        Returns:
            ``(B, 1 + N, D)``.
        """
        cls = cast(Tensor, self.cls_token) + self.cls_encoding()
        return torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def forward_features(  # type: ignore[override]
        self, x: Tensor, timestamps: Tensor
    ) -> Tensor:
        """Encode a time series of images.

        Args:
            x: ``(B, T, C, H, W)``.
            timestamps: ``(B, T, 3)`` calendar ``(year, month, hour)``.

        Returns:
            ``(B, 1 + T*L, D)`` normed tokens.
        """
        tokens = self.prepend_cls(self.embed(x, timestamps))
        tokens = self.norm_pre(self.patch_drop(self.pos_drop(tokens)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(self.blocks, tokens)
        else:
            tokens = self.blocks(tokens)
        return cast(Tensor, self.norm(tokens))

    def forward(self, x: Tensor, timestamps: Tensor) -> Tensor:  # type: ignore[override]
        """Classify a time series of images.

        Args:
            x: ``(B, T, C, H, W)``.
            timestamps: ``(B, T, 3)`` calendar ``(year, month, hour)``.

        Returns:
            ``(B, num_classes)`` logits (pooled features if ``num_classes=0``).
        """
        return self.forward_head(self.forward_features(x, timestamps))

    def convert_checkpoint(self, checkpoint: Mapping[str, object]) -> StateDict:
        """This model's state dict from a checkpoint (see :func:`convert_temporal_state_dict`).

        Args:
            checkpoint: A file's top-level mapping or a bare state dict.

        Returns:
            Tensors for ``load_state_dict``.
        """
        return convert_temporal_state_dict(checkpoint, self)

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: build a new model with the wanted ``img_size``.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot change its input size; build a new model '
            'with img_size=... (checkpoints are resampled on load)'
        )

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        timestamps: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Outputs of selected blocks, as timm's ``forward_intermediates``.

        Args:
            x: ``(B, T, C, H, W)``.
            timestamps: ``(B, T, 3)`` calendar values.
            indices: Blocks to return (last n if int, all if None).
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: ``'NCHW'`` (maps of ``T * D`` channels, the images'
                tokens of one location side by side) or ``'NLC'`` (patch tokens).
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or ``(final tokens, intermediates)``.
        """
        take, max_index = feature_take_indices(len(self.blocks), indices)
        tokens = self.prepend_cls(self.embed(x, timestamps))
        tokens = self.norm_pre(tokens)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        out = []
        for i, block in enumerate(blocks):
            tokens = block(tokens)
            if i in take:
                y = (self.norm(tokens) if norm else tokens)[:, 1:]
                if output_fmt == 'NCHW':
                    h, w = self.patch_embed.grid_size
                    y = y.unflatten(1, (x.shape[1], h, w)).permute(0, 1, 4, 2, 3)
                    y = y.flatten(1, 2).contiguous()
                out.append(y)
        if intermediates_only:
            return out
        return cast(Tensor, self.norm(tokens)), out


def convert_temporal_state_dict(
    checkpoint: Mapping[str, object], model: TemporalViT
) -> StateDict:
    """Convert a checkpoint to *model*'s keys and shapes.

    Accepts SatMAE's temporal MAE and classifier checkpoints, ExPLoRA exports
    (split projections and stale LoRA factors dropped) and plain RGB ViT/MAE
    checkpoints, whose shared patch embedding fits as it is; their position
    table (full width, no room for the time encodings) is not taken, the
    model's sin-cos table stays. A grid of another size is resampled.
    Average-pooling models get a fresh ``fc_norm`` (see
    :func:`~explora_geo.models.satmae_group.fit_pooling_keys`).

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.
        model: The model to load into.

    Returns:
        A complete state dict (the head is left out when its shape differs).
    """
    sd = fit_pooling_keys(encoder_state_dict(checkpoint), model)
    target = model.state_dict()
    pos = sd.get('pos_embed')
    if pos is not None and pos.shape[-1] != target['pos_embed'].shape[-1]:
        pos = None  # an RGB ViT's table: no time encodings
    sd['pos_embed'] = target['pos_embed'] if pos is None else fit_pos_embed(pos, model)
    if 'fc_norm.weight' in target and 'fc_norm.weight' not in sd:
        sd['fc_norm.weight'] = target['fc_norm.weight']
        sd['fc_norm.bias'] = target['fc_norm.bias']
    return sd


def load_temporal_checkpoint(
    model: TemporalViT, checkpoint: Mapping[str, object], source: str = 'checkpoint'
) -> TemporalViT:
    """Load any supported checkpoint into *model* strictly.

    Args:
        model: The model.
        checkpoint: A file's top-level mapping or a bare state dict.
        source: Where it came from, for error messages.

    Returns:
        *model*.

    Raises:
        KeyError: If keys are missing or unexpected (both listed).
        ValueError: If a shape differs (the key is named).
    """
    load_into(model, convert_temporal_state_dict(checkpoint, model), source=source)
    return model


default_cfgs = generate_default_cfgs(
    {
        'explora_vitl_satmae_temporal.untrained': {
            'url': '',
            'num_classes': 0,
            'input_size': (3, 224, 224),
            'fixed_input_size': True,
            'mean': (0.4182, 0.4215, 0.3991),
            'std': (0.2877, 0.2754, 0.2764),
            'first_conv': 'patch_embed.proj',
            'classifier': 'head',
        }
    }
)


@register_model
def explora_vitl_satmae_temporal(
    pretrained: bool = False, **kwargs: Any
) -> TemporalViT:
    """SatMAE temporal ViT-L/16 (224 px, 384 time dims); call as ``model(x, timestamps)``.

    Args:
        pretrained: Must be False (load weights with :func:`load_temporal_checkpoint`).
        **kwargs: :class:`TemporalViT` arguments.

    Returns:
        The model.
    """
    args = {'embed_dim': 1024, 'depth': 24, 'num_heads': 16}
    model: TemporalViT = build_model_with_cfg(
        TemporalViT,
        'explora_vitl_satmae_temporal',
        pretrained,
        pretrained_filter_fn=convert_temporal_state_dict,
        **{**args, **kwargs},
    )
    return model


class TemporalMAE(MaskedAutoencoder):
    """SatMAE's temporal masked autoencoder around a :class:`TemporalViT`.

    Tokens of all images are masked jointly, or with ``same_mask`` the same
    locations in every image. The decoder adds a fixed 2D position table
    (``decoder_embed_dim - 192`` dims) and 64-dim year/month/hour encodings
    and predicts every patch's pixels (MAE's pixel layout) with one head.

    ``forward(x, mask_ratio, timestamps=...)`` returns ``pred`` as
    ``(B, T, L, p*p*C)`` and ``mask`` as ``(B, T, L)``.

    .. versionadded:: 0.1
    """

    encoder: TemporalViT
    decoder_pos_embed: Tensor

    def __init__(
        self,
        encoder: TemporalViT,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        decoder_time_embed_dim: int = 64,
        norm_pix_loss: bool = True,
        same_mask: bool = False,
    ) -> None:
        """Initialize a new TemporalMAE instance.

        Args:
            encoder: The temporal ViT (build it with ``global_pool='token'`` so
                it keeps its final norm).
            decoder_embed_dim: Decoder width.
            decoder_depth: Decoder blocks.
            decoder_num_heads: Decoder attention heads.
            decoder_mlp_ratio: Decoder MLP ratio.
            decoder_time_embed_dim: Width of each decoder time encoding.
            norm_pix_loss: Normalise target patches before the loss.
            same_mask: Mask the same locations in every image.

        Raises:
            TypeError: If *encoder* is not a :class:`TemporalViT`.
            ValueError: If it has no final norm or the widths do not fit.
        """
        super().__init__()
        if not isinstance(encoder, TemporalViT):
            raise TypeError(
                f'TemporalMAE needs a TemporalViT, got {type(encoder).__name__}'
            )
        if isinstance(encoder.norm, nn.Identity):
            raise ValueError(
                "the MAE encoder needs its final norm: build it with global_pool='token'"
            )
        pos_dim = decoder_embed_dim - 3 * decoder_time_embed_dim
        if pos_dim <= 0 or pos_dim % 4 or decoder_time_embed_dim % 2:
            raise ValueError(
                f'decoder_embed_dim={decoder_embed_dim} and decoder_time_embed_dim='
                f'{decoder_time_embed_dim} leave {pos_dim} position dims; need a '
                'positive multiple of 4'
            )
        self.encoder = encoder
        self.norm_pix_loss = norm_pix_loss
        self.same_mask = same_mask
        self.decoder_time_embed_dim = decoder_time_embed_dim
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        self.num_patches = int(encoder.patch_embed.num_patches)
        device = cast(Tensor, encoder.cls_token).device

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            'decoder_pos_embed',
            sincos_pos_embed_2d(pos_dim, encoder.patch_embed.grid_size[0]).to(device),
        )
        self.decoder_blocks = build_decoder_blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(
            decoder_embed_dim, self.patch_size**2 * self.in_chans
        )
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def draw_mask(
        self, batch_size: int, frames: int, mask_ratio: float, device: torch.device
    ) -> RandomMask:
        """Draw the masking of the ``T * L`` tokens.

        Args:
            batch_size: ``B``.
            frames: ``T``.
            mask_ratio: Fraction of tokens removed.
            device: Where to create it.

        Returns:
            A masking over image-major token positions.
        """
        num = self.num_patches
        if not self.same_mask:
            return random_masking(batch_size, frames * num, mask_ratio, device)
        spatial = random_masking(batch_size, num, mask_ratio, device)
        shuffle = torch.argsort(spatial.ids_restore, dim=1)
        keep = spatial.ids_keep.shape[1]
        kept = [shuffle[:, :keep] + t * num for t in range(frames)]
        removed = [shuffle[:, keep:] + t * num for t in range(frames)]
        full = torch.cat(kept + removed, dim=1)
        return RandomMask(
            ids_keep=full[:, : frames * keep],
            ids_restore=torch.argsort(full, dim=1),
            mask=spatial.mask.repeat(1, frames),
        )

    def forward_encoder(
        self, x: Tensor, timestamps: Tensor, masking: RandomMask
    ) -> Tensor:
        """Encode the class token and the kept tokens.

        Args:
            x: ``(B, T, C, H, W)``.
            timestamps: ``(B, T, 3)`` calendar values.
            masking: Which tokens to keep.

        Returns:
            ``(B, 1 + K, D)`` normalised encoder tokens.
        """
        vit = self.encoder
        kept = lightly_utils.get_at_index(vit.embed(x, timestamps), masking.ids_keep)
        tokens = vit.norm_pre(vit.prepend_cls(kept))
        if vit.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(vit.blocks, tokens)
        else:
            tokens = vit.blocks(tokens)
        return cast(Tensor, vit.norm(tokens))

    def forward_decoder(
        self, latent: Tensor, timestamps: Tensor, masking: RandomMask
    ) -> Tensor:
        """Predict the pixels of every patch of every image.

        Args:
            latent: Encoder output ``(B, 1 + K, D)``.
            timestamps: ``(B, T, 3)`` calendar values.
            masking: The masking used by the encoder.

        Returns:
            ``(B, T*L, p*p*C)`` predictions.
        """
        b, t = timestamps.shape[:2]
        x = self.decoder_embed(latent)
        patches = unshuffle_tokens(x[:, 1:], self.mask_token, masking.ids_restore)
        time = time_encoding(
            timestamps, self.decoder_time_embed_dim, self.encoder.year_offset
        )
        pos = self.decoder_pos_embed[:, 1:]
        enc = torch.cat(
            [
                pos.unsqueeze(1).expand(b, t, -1, -1),
                time.unsqueeze(2).expand(-1, -1, pos.shape[1], -1),
            ],
            dim=-1,
        ).flatten(1, 2)
        cls_enc = torch.cat(
            [self.decoder_pos_embed[:, :1], pos.new_zeros(1, 1, time.shape[-1])], dim=-1
        )
        x = torch.cat([x[:, :1] + cls_enc, patches + enc], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        pred: Tensor = self.decoder_pred(self.decoder_norm(x))
        return pred[:, 1:]

    def forward(
        self, x: Tensor, mask_ratio: float = 0.75, **extra: Tensor
    ) -> MAEOutput:
        """Mask, encode, decode and compute the reconstruction loss.

        Args:
            x: ``(B, T, C, H, W)`` images of one place.
            mask_ratio: Fraction of tokens removed.
            **extra: ``timestamps``: ``(B, T, 3)`` calendar ``(year, month, hour)``.

        Returns:
            Loss, predictions ``(B, T, L, p*p*C)`` and mask ``(B, T, L)``.

        Raises:
            ValueError: If the timestamps are missing or do not fit *x*.
        """
        timestamps = extra.get('timestamps')
        if timestamps is None:
            raise ValueError(
                'TemporalMAE needs timestamps=(B, T, 3) calendar (year, month, hour)'
            )
        check_timestamps(timestamps, x)
        b, t = x.shape[:2]
        masking = self.draw_mask(b, t, mask_ratio, x.device)
        latent = self.forward_encoder(x, timestamps, masking)
        pred = self.forward_decoder(latent, timestamps, masking)
        target = lightly_utils.patchify(x.flatten(0, 1), self.patch_size)
        target = target.unflatten(0, (b, t)).flatten(1, 2)
        loss = masked_reconstruction_loss(
            pred, target, masking.mask, self.norm_pix_loss
        )
        return MAEOutput(
            loss=loss,
            pred=pred.unflatten(1, (t, -1)),
            mask=masking.mask.unflatten(1, (t, -1)),
        )

    def convert_source_encoder(self, state_dict: StateDict) -> StateDict:
        """Convert source encoder tensors (see :func:`convert_temporal_state_dict`).

        Args:
            state_dict: Encoder tensors of a SatMAE temporal or RGB MAE checkpoint.

        Returns:
            Tensors keyed like ``self.encoder.state_dict()``.
        """
        return convert_temporal_state_dict(state_dict, self.encoder)

    def convert_source_decoder(self, state_dict: StateDict) -> StateDict:
        """Fit source decoder tensors; a position table of another width stays the model's.

        Args:
            state_dict: ``decoder_*`` and ``mask_token`` tensors.

        Returns:
            Tensors keyed like this model's decoder.
        """
        out = normalize_decoder_keys(state_dict)
        own = self.state_dict()['decoder_pos_embed']
        table = out.get('decoder_pos_embed')
        if table is None or table.shape[-1] != own.shape[-1]:
            out['decoder_pos_embed'] = own
        return super().convert_source_decoder(out)


@register_mae('explora_vitl_satmae_temporal')
def mae_vitl_satmae_temporal(
    img_size: int = 224,
    in_chans: int = 3,
    norm_pix_loss: bool = True,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    decoder_num_heads: int = 16,
    decoder_mlp_ratio: float = 4.0,
    decoder_time_embed_dim: int = 64,
    same_mask: bool = False,
    **timm_kwargs: Any,
) -> TemporalMAE:
    """Temporal MAE ViT-L/16 with its 512-wide, 8-block decoder.

    Args:
        img_size: Size of each image.
        in_chans: Channels of each image.
        norm_pix_loss: Normalise target patches.
        decoder_embed_dim: Decoder width.
        decoder_depth: Decoder blocks.
        decoder_num_heads: Decoder attention heads.
        decoder_mlp_ratio: Decoder MLP ratio.
        decoder_time_embed_dim: Width of each decoder time encoding.
        same_mask: Mask the same locations in every image.
        **timm_kwargs: :class:`TemporalViT` arguments.

    Returns:
        The model (default source weights: the RGB ``mae_visualize_vit_large.pth``).
    """
    encoder = timm.create_model(
        'explora_vitl_satmae_temporal',
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        in_chans=in_chans,
        global_pool='token',
        learnable_encodings=False,
        **timm_kwargs,
    )
    model = TemporalMAE(
        cast(TemporalViT, encoder),
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        decoder_mlp_ratio=decoder_mlp_ratio,
        decoder_time_embed_dim=decoder_time_embed_dim,
        norm_pix_loss=norm_pix_loss,
        same_mask=same_mask,
    )
    model.default_weights = ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL
    return model
