"""Masked autoencoders (MAE) whose encoder is a timm-style ViT.

:class:`MaskedAutoencoder` is the interface the ExPLoRA MAE task trains: an
``encoder`` (where the ExPLoRA adapter goes), decoder parts named as in the
published checkpoints (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) and a ``forward`` that
masks, encodes, decodes and returns the reconstruction loss. The pieces every
MAE variant shares live here as functions: per-sample random masking
(:func:`random_masking`), the (normalised-pixel) loss on masked patches
(:func:`masked_reconstruction_loss`), fixed 2D sin-cos tables
(:func:`sincos_pos_embed_2d`), timm decoder blocks (:func:`build_decoder_blocks`)
and the un-shuffling of decoder tokens (:func:`unshuffle_tokens`).

:class:`MaskedAutoencoderViT` is the RGB MAE of He et al. (2022) on a timm
``VisionTransformer``, registered for ``explora_vitb_mae`` and
``explora_vitl_mae``; it reads the ``mae_visualize_vit_*.pth`` checkpoints
(encoder + decoder under ``"model"``). Other variants register themselves with
:func:`register_mae` and are built by :func:`create_mae`.

.. versionadded:: 0.1
"""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import timm
import torch
from lightly.models import utils as lightly_utils
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.hub import load_state_dict_from_url
from torchvision.models._api import WeightsEnum

from .checkpoints import (
    StateDict,
    convert_state_dict,
    read_checkpoint,
    split_mae_decoder,
    unwrap_state_dict,
)
from .pos_embed import resample_pos_embed
from .weights import ExPLoRAViTB16MAEWeights, ExPLoRAViTL16MAEWeights, get_weight

__all__ = (
    'MAE_MODELS',
    'MAEOutput',
    'MaskedAutoencoder',
    'MaskedAutoencoderViT',
    'RandomMask',
    'build_decoder_blocks',
    'create_mae',
    'masked_reconstruction_loss',
    'num_kept_tokens',
    'random_masking',
    'register_mae',
    'sincos_pos_embed_2d',
    'unshuffle_tokens',
)

#: What a source checkpoint can be given as.
type SourceWeights = WeightsEnum | str | os.PathLike[str] | bool | None


@dataclass
class MAEOutput:
    """Result of a masked-autoencoder forward pass.

    Attributes:
        loss: Mean reconstruction loss over the removed patches (a scalar).
        pred: Predicted pixels of every patch, ``(B, L, patch_dim)`` in the
            layout of :func:`lightly.models.utils.patchify` (variants with
            several token groups may add leading group dimensions).
        mask: ``(B, L)``, 1 where a patch was removed, 0 where it was kept.

    .. versionadded:: 0.1
    """

    loss: Tensor
    pred: Tensor
    mask: Tensor


@dataclass
class RandomMask:
    """A per-sample random masking of ``L`` tokens, as in MAE.

    Attributes:
        ids_keep: ``(B, K)`` indices of the kept tokens (in shuffled order).
        ids_restore: ``(B, L)`` permutation that puts ``[kept, removed]``
            tokens back in their original order (see :func:`unshuffle_tokens`).
        mask: ``(B, L)`` float, 1 = removed, 0 = kept, in original order.

    .. versionadded:: 0.1
    """

    ids_keep: Tensor
    ids_restore: Tensor
    mask: Tensor


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """Number of tokens a masking of *mask_ratio* keeps.

    MAE computes ``int(L * (1 - mask_ratio))``; rounding gives the same count
    except where floating-point error puts the product just below an integer
    (e.g. ``10 * (1 - 0.9)``), where truncation would drop a token.

    Args:
        num_tokens: Tokens before masking, ``L``.
        mask_ratio: Fraction removed, in ``[0, 1)``.

    Returns:
        ``round(L * (1 - mask_ratio))``, at least 1.

    Raises:
        ValueError: If *mask_ratio* is outside ``[0, 1)``.
    """
    if not 0 <= mask_ratio < 1:
        raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
    return max(1, round(num_tokens * (1 - mask_ratio)))


def random_masking(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> RandomMask:
    """Draw MAE's per-sample random masking: argsort of uniform noise.

    :func:`lightly.models.utils.random_token_mask` draws the same kind of
    masking but returns only index lists with the class token folded in; MAE's
    decoder needs ``ids_restore`` and the binary mask, so they are built here.

    Args:
        batch_size: ``B``.
        num_tokens: ``L``, patch tokens per sample (no prefix tokens).
        mask_ratio: Fraction of tokens removed.
        device: Where to create the indices.
        generator: Random generator for the noise (default: the global one).

    Returns:
        The masking.
    """
    keep = num_kept_tokens(num_tokens, mask_ratio)
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_tokens, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return RandomMask(
        ids_keep=ids_shuffle[:, :keep], ids_restore=ids_restore, mask=mask
    )


def unshuffle_tokens(kept: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """Append mask tokens to the kept tokens and restore the original order.

    Args:
        kept: ``(B, K, D)`` decoder embeddings of the kept tokens (no prefix).
        mask_token: ``(1, 1, D)`` learned mask token.
        ids_restore: ``(B, L)`` from :class:`RandomMask`.

    Returns:
        ``(B, L, D)`` tokens, mask tokens where patches were removed.
    """
    batch, num_kept, dim = kept.shape
    fill = mask_token.to(kept.dtype).expand(batch, ids_restore.shape[1] - num_kept, dim)
    return lightly_utils.get_at_index(torch.cat([kept, fill], dim=1), ids_restore)


def masked_reconstruction_loss(
    pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool = True
) -> Tensor:
    """MAE's loss: mean squared error per patch, averaged over removed patches.

    Computed in float32 whatever the dtype of *pred* (mixed precision).

    Args:
        pred: ``(..., L, P)`` predicted patches.
        target: ``(..., L, P)`` true patches (e.g. from
            :func:`lightly.models.utils.patchify`).
        mask: ``(..., L)``, 1 = removed.
        norm_pix_loss: Normalise each target patch to zero mean and unit
            variance first (MAE's ``--norm_pix_loss``).

    Returns:
        The scalar loss.
    """
    target = target.float()
    if norm_pix_loss:
        # Same as MAE: (x - mean) / sqrt(var + 1e-6), unbiased variance.
        target = lightly_utils.normalize_mean_var(target, dim=-1, eps=1e-6)
    loss = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (loss * mask).sum() / mask.sum()


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


def build_decoder_blocks(
    embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0
) -> nn.ModuleList:
    """MAE decoder blocks: timm ``Block`` with a fused ``attn.qkv`` (bias on).

    Args:
        embed_dim: Decoder width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over *embed_dim*.

    Returns:
        The blocks; their state-dict keys match the published MAE decoders.
    """
    return nn.ModuleList(
        Block(
            embed_dim,
            num_heads,
            mlp_ratio,
            qkv_bias=True,
            norm_layer=cast(type[nn.Module], partial(nn.LayerNorm, eps=1e-6)),
        )
        for _ in range(depth)
    )


def _read_source(
    weights: SourceWeights, default: WeightsEnum | None
) -> tuple[Any, str]:
    """Fetch a raw source checkpoint (encoder *and* decoder tensors).

    ``ExPLoRAWeights.get_state_dict`` keeps only the encoder, so enum members
    are read from their URL directly.
    """
    member: WeightsEnum
    if weights is True:
        if default is None:
            raise ValueError('this MAE has no default weights; pass an enum or a path')
        member = default
    elif isinstance(weights, WeightsEnum):
        member = weights
    elif isinstance(weights, str | os.PathLike):
        if Path(weights).exists():
            return read_checkpoint(weights), str(weights)
        member = get_weight(str(weights))
    else:
        raise TypeError(f'unsupported weights: {weights!r}')
    checkpoint = load_state_dict_from_url(
        member.url, map_location='cpu', weights_only=True, progress=True
    )
    return checkpoint, str(member)


class MaskedAutoencoder(nn.Module):
    """Base class of the masked autoencoders ExPLoRA continues pre-training.

    Subclasses build ``encoder`` (a timm-style ViT: ``blocks`` with fused
    ``attn.qkv``, ``cls_token``, norms) and the decoder parts as top-level
    attributes named as in the published checkpoints, and implement
    :meth:`forward`. Parameter names are therefore ``encoder.<timm name>`` and
    ``decoder_*`` / ``mask_token``; :meth:`load_source_checkpoint` converts the
    flat published layout.

    .. versionadded:: 0.1
    """

    #: The ViT the adapter is applied to and that is exported.
    encoder: nn.Module
    #: Decoder transformer blocks (timm ``Block`` with fused ``attn.qkv``).
    decoder_blocks: nn.ModuleList
    #: Normalise target patches before the loss.
    norm_pix_loss: bool = True
    #: Weights loaded for ``weights=True``.
    default_weights: WeightsEnum | None = None

    def forward(
        self, x: Tensor, mask_ratio: float = 0.75, **extra: Tensor
    ) -> MAEOutput:
        """Mask, encode, decode and compute the reconstruction loss.

        Args:
            x: Images ``(B, C, H, W)`` (variants may take more dimensions).
            mask_ratio: Fraction of patches removed.
            **extra: Model-specific inputs, e.g. ``timestamps``.

        Returns:
            Loss, predictions and mask.
        """
        raise NotImplementedError

    def decoder_trainable_patterns(self) -> tuple[str, ...]:
        """Parameter names (``fnmatch``) of the decoder trained by ExPLoRA besides its LoRA.

        Returns:
            By default the decoder's normalisation layers.
        """
        return ('decoder_norm.*', 'decoder_blocks.*.norm*')

    def convert_source_encoder(self, state_dict: StateDict) -> StateDict:
        """Bring the encoder tensors of a source checkpoint to ``encoder``'s names.

        Args:
            state_dict: Encoder tensors in the published layout.

        Returns:
            Tensors keyed like ``self.encoder.state_dict()`` (resampled to its
            grid and channels by :func:`~explora_geo.models.checkpoints.convert_state_dict`).
        """
        return convert_state_dict(state_dict, self.encoder)

    def convert_source_decoder(self, state_dict: StateDict) -> StateDict:
        """Fit the decoder tensors of a source checkpoint to this model.

        Decoder position tables of another grid size are resampled as MAE
        resamples position tables (bicubic, no antialiasing).

        Args:
            state_dict: ``decoder_*`` and ``mask_token`` tensors.

        Returns:
            Tensors keyed like this model's top-level decoder parameters.
        """
        state_dict = dict(state_dict)
        own = self.state_dict()
        for key, value in state_dict.items():
            if (
                key.endswith('pos_embed')
                and key in own
                and value.ndim == 3
                and own[key].shape[-1] == value.shape[-1]
                and own[key].shape[1] != value.shape[1]
            ):
                grid = round((own[key].shape[1] - 1) ** 0.5)
                state_dict[key] = resample_pos_embed(value, grid, rule='mae')
        return state_dict

    def load_source_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Load a published MAE checkpoint (encoder and decoder), strictly.

        Args:
            checkpoint: The file's mapping (``{"model": ...}``) or a flat state
                dict in the published layout.

        Raises:
            KeyError: If keys are missing or unexpected (both are listed, in
                the published naming).
            ValueError: If a tensor's shape differs from the model's.
        """
        encoder_sd, decoder_sd = split_mae_decoder(unwrap_state_dict(checkpoint))
        converted = {
            f'encoder.{k}': v
            for k, v in self.convert_source_encoder(encoder_sd).items()
        }
        converted.update(self.convert_source_decoder(decoder_sd))
        target = self.state_dict()
        # New heads and adapters are not part of a source checkpoint.
        optional = ('encoder.head.', 'encoder.fc_norm.')
        missing = sorted(
            k.removeprefix('encoder.')
            for k in target
            if k not in converted
            and not k.startswith(optional)
            and not k.endswith(('.lora_A', '.lora_B'))
        )
        unexpected = sorted(
            k.removeprefix('encoder.') for k in converted if k not in target
        )
        if missing or unexpected:
            hint = ''
            if any(k.startswith('decoder_') or k == 'mask_token' for k in missing):
                hint = (
                    ' (MAE pre-training needs a checkpoint with the decoder, e.g. '
                    'mae_visualize_vit_large.pth, not the encoder-only release)'
                )
            raise KeyError(
                f'MAE checkpoint does not match {type(self).__name__}: '
                f'missing keys: {missing}; unexpected keys: {unexpected}{hint}'
            )
        for key, value in converted.items():
            if target[key].shape != value.shape:
                raise ValueError(
                    f'MAE checkpoint: {key.removeprefix("encoder.")} has shape '
                    f'{tuple(value.shape)}, the model expects {tuple(target[key].shape)}'
                )
        self.load_state_dict(converted, strict=False)


class MaskedAutoencoderViT(MaskedAutoencoder):
    """The MAE of He et al. (2022) on a timm ``VisionTransformer``.

    Reproduces ``models_mae.MaskedAutoencoderViT``: patches are masked
    per sample, the encoder sees the class token and the kept patches, the
    decoder embeds them, fills in ``mask_token``, adds the fixed sin-cos
    ``decoder_pos_embed`` and predicts every patch's pixels.

    lightly's ``MaskedVisionTransformerTIMM`` / ``MAEDecoderTIMM`` compute the
    same thing, but re-initialise the ViT's weights and position table,
    add an encoder mask token and nest parameters under ``vit.`` / ``decoder.``;
    here the ViT keeps its own names and weights (the adapter and exports
    rely on that) and the decoder uses the published key names.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
    ) -> None:
        """Initialize a new MaskedAutoencoderViT instance.

        Args:
            encoder: A timm ViT with a class token and a square patch grid.
            decoder_embed_dim: Decoder width.
            decoder_depth: Decoder blocks.
            decoder_num_heads: Decoder attention heads.
            decoder_mlp_ratio: Decoder MLP ratio.
            norm_pix_loss: Normalise target patches before the loss.

        Raises:
            TypeError: If *encoder* is not a timm ``VisionTransformer``.
            ValueError: If its patch grid is not square or it has no class token.
        """
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(
                f'MaskedAutoencoderViT needs a timm VisionTransformer, got '
                f'{type(encoder).__name__}'
            )
        grid = tuple(encoder.patch_embed.grid_size)
        if grid[0] != grid[1]:
            raise ValueError(f'MAE needs a square patch grid, got {grid}')
        if encoder.cls_token is None or encoder.num_prefix_tokens != 1:
            raise ValueError('MAE needs a ViT with exactly one prefix (class) token')
        self.encoder = encoder
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        self.num_patches = grid[0] * grid[1]
        embed_dim = int(encoder.embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_pos_embed_2d(decoder_embed_dim, grid[0]), requires_grad=False
        )
        self.decoder_blocks = build_decoder_blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(
            decoder_embed_dim, self.patch_size**2 * self.in_chans
        )
        # MAE's decoder initialisation: xavier-uniform linears, unit norms.
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, x: Tensor, masking: RandomMask) -> Tensor:
        """Encode the class token and the kept patches.

        Args:
            x: Images ``(B, C, H, W)``.
            masking: Which patches to keep.

        Returns:
            ``(B, 1 + K, D)`` normalised encoder tokens.
        """
        vit = self.encoder
        assert isinstance(vit, VisionTransformer)
        tokens = vit._pos_embed(vit.patch_embed(x))  # class token + positions
        prefix = vit.num_prefix_tokens
        kept = lightly_utils.get_at_index(tokens[:, prefix:], masking.ids_keep)
        tokens = vit.norm_pre(torch.cat([tokens[:, :prefix], kept], dim=1))
        if vit.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(vit.blocks, tokens)
        else:
            tokens = vit.blocks(tokens)
        out: Tensor = vit.norm(tokens)
        return out

    def forward_decoder(self, latent: Tensor, masking: RandomMask) -> Tensor:
        """Predict the pixels of every patch.

        Args:
            latent: Encoder output ``(B, 1 + K, D)``.
            masking: The masking used by the encoder.

        Returns:
            ``(B, L, patch_size**2 * C)`` predictions (class token dropped).
        """
        x = self.decoder_embed(latent)
        patches = unshuffle_tokens(x[:, 1:], self.mask_token, masking.ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        pred: Tensor = self.decoder_pred(self.decoder_norm(x))
        return pred[:, 1:]

    def forward(
        self, x: Tensor, mask_ratio: float = 0.75, **extra: Tensor
    ) -> MAEOutput:
        """Mask, encode, decode and compute the reconstruction loss.

        Args:
            x: Images ``(B, C, H, W)``.
            mask_ratio: Fraction of patches removed.
            **extra: Not used by this model.

        Returns:
            Loss, predictions ``(B, L, p*p*C)`` and mask ``(B, L)``.

        Raises:
            ValueError: If *x* does not have the encoder's channels.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f'expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}'
            )
        masking = random_masking(
            x.shape[0], self.num_patches, mask_ratio, device=x.device
        )
        latent = self.forward_encoder(x, masking)
        pred = self.forward_decoder(latent, masking)
        target = lightly_utils.patchify(x, self.patch_size)
        loss = masked_reconstruction_loss(
            pred, target, masking.mask, self.norm_pix_loss
        )
        return MAEOutput(loss=loss, pred=pred, mask=masking.mask)


#: Masked autoencoders by encoder model name.
MAE_MODELS: dict[str, Callable[..., MaskedAutoencoder]] = {}

_F = TypeVar('_F', bound=Callable[..., MaskedAutoencoder])


def register_mae(name: str) -> Callable[[_F], _F]:
    """Register a masked-autoencoder builder under its encoder's model name.

    Builders are called by :func:`create_mae` with keyword arguments
    ``img_size``, ``in_chans`` and ``norm_pix_loss`` (always accepted), plus
    model-specific ones (decoder sizes, timm arguments of the encoder).

    Args:
        name: The encoder's timm name, e.g. ``'explora_vitl_mae'``.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: If another builder is registered under *name*.
    """

    def decorator(fn: _F) -> _F:
        old = MAE_MODELS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(
                f'an MAE is already registered as {name!r} ({old.__module__}.{old.__qualname__})'
            )
        MAE_MODELS[name] = fn
        return fn

    return decorator


def create_mae(
    name: str, weights: SourceWeights = None, **kwargs: Any
) -> MaskedAutoencoder:
    """Build a registered masked autoencoder and load its source weights.

    Args:
        name: Registered encoder name (see :data:`MAE_MODELS`).
        weights: Source checkpoint with encoder *and* decoder: an enum member,
            its name, a local path, ``True`` for the model's default, or
            ``None`` for random initialisation.
        **kwargs: Passed to the builder (``img_size``, ``in_chans``,
            ``norm_pix_loss``, decoder sizes, encoder arguments).

    Returns:
        The model.

    Raises:
        ValueError: If no MAE is registered as *name*.
    """
    try:
        builder = MAE_MODELS[name]
    except KeyError:
        raise ValueError(
            f'no masked autoencoder registered as {name!r}; known: {sorted(MAE_MODELS)}'
        ) from None
    model = builder(**kwargs)
    if weights is None or weights is False:
        return model
    checkpoint, source = _read_source(weights, model.default_weights)
    try:
        model.load_source_checkpoint(checkpoint)
    except (KeyError, ValueError) as err:
        raise type(err)(f'{source}: {err.args[0]}') from err
    return model


def _build_vit_mae(
    name: str,
    default_weights: WeightsEnum,
    img_size: int = 224,
    in_chans: int = 3,
    norm_pix_loss: bool = True,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    decoder_num_heads: int = 16,
    decoder_mlp_ratio: float = 4.0,
    **timm_kwargs: Any,
) -> MaskedAutoencoderViT:
    encoder = timm.create_model(
        name,
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        in_chans=in_chans,
        **timm_kwargs,
    )
    model = MaskedAutoencoderViT(
        encoder,
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        decoder_mlp_ratio=decoder_mlp_ratio,
        norm_pix_loss=norm_pix_loss,
    )
    model.default_weights = default_weights
    return model


@register_mae('explora_vitb_mae')
def mae_vitb(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE ViT-B/16 with its 512-wide, 8-block decoder.

    Args:
        **kwargs: ``img_size``, ``in_chans``, ``norm_pix_loss``, ``decoder_*``
            sizes and timm arguments of the encoder.

    Returns:
        The model (default weights: ``mae_visualize_vit_base.pth``).
    """
    return _build_vit_mae(
        'explora_vitb_mae', ExPLoRAViTB16MAEWeights.MAE_IN1K_PIXEL, **kwargs
    )


@register_mae('explora_vitl_mae')
def mae_vitl(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE ViT-L/16 with its 512-wide, 8-block decoder (M-ExPLoRA's source).

    Args:
        **kwargs: ``img_size``, ``in_chans``, ``norm_pix_loss``, ``decoder_*``
            sizes and timm arguments of the encoder.

    Returns:
        The model (default weights: ``mae_visualize_vit_large.pth``).
    """
    return _build_vit_mae(
        'explora_vitl_mae', ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL, **kwargs
    )
