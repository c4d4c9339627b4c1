"""Masked autoencoders (MAE) whose encoder is a timm-style ViT.

:class:`MaskedAutoencoder` is the template every MAE of this package
specialises, and the interface the ExPLoRA MAE task trains: an ``encoder``
(where the ExPLoRA adapter goes), decoder parts named as in the published
checkpoints (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) and a ``forward`` that
masks, encodes, decodes and returns the reconstruction loss. The template owns
the decoder construction, the masking (:func:`random_masking`), the encoder
pass over the kept tokens and the decoder pass; a family overrides small
hooks: its input check, its encoder tokens, how many groups of tokens share a
position (band groups, images of a time series), its decoder encodings and
prediction heads, its targets, and how its source checkpoints convert.

:class:`MaskedAutoencoderViT` is the RGB MAE of He et al. (2022) on a timm
``VisionTransformer``; SatMAE's group-channel and temporal MAEs are in
:mod:`~explora_geo.models.satmae_group_mae` and
:mod:`~explora_geo.models.satmae_temporal_mae`. Builders are registered by
encoder name with :func:`register_mae` (see :mod:`explora_geo.models.catalog`)
and built by :func:`create_mae`.

.. versionadded:: 0.1
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import timm
import torch
from lightly.models import utils as lightly_utils
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

from .checkpoints import StateDict, load_into, split_mae_decoder, unwrap_state_dict
from .convert import convert_mae_decoder, convert_state_dict
from .pos_embed import sincos_pos_embed_2d
from .vit import encode_tokens
from .weights import SourceWeights, resolve_weights

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
    'patch_errors',
    'random_masking',
    'register_mae',
    'unshuffle_tokens',
)


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
    *,
    groups: int = 1,
    shared: bool = False,
) -> RandomMask:
    """Draw MAE's per-sample random masking: argsort of uniform noise.

    :func:`lightly.models.utils.random_token_mask` draws the same kind of
    masking but returns only index lists with the class token folded in; MAE's
    decoder needs ``ids_restore`` and the binary mask, so they are built here.

    Tokens come in *groups* (band groups, images of a time series) of
    *num_tokens* positions each, group-major. They are masked jointly, or with
    *shared* the same positions are masked in every group.

    Args:
        batch_size: ``B``.
        num_tokens: ``L``, patch tokens per group (no prefix tokens).
        mask_ratio: Fraction of tokens removed.
        device: Where to create the indices.
        generator: Random generator for the noise (default: the global one).
        groups: ``G``, groups of ``L`` tokens.
        shared: Mask the same positions in every group.

    Returns:
        The masking of the ``G * L`` tokens.
    """
    total = num_tokens if shared else groups * num_tokens
    keep = num_kept_tokens(total, mask_ratio)
    noise = torch.rand(batch_size, total, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    if shared and groups > 1:
        # [kept positions of all groups, removed positions of all groups]
        ids_shuffle = torch.cat(
            [ids_shuffle[:, :keep] + g * num_tokens for g in range(groups)]
            + [ids_shuffle[:, keep:] + g * num_tokens for g in range(groups)],
            dim=1,
        )
        keep *= groups
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, ids_shuffle.shape[1], device=device)
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


def patch_errors(pred: Tensor, target: Tensor, norm_pix_loss: bool = True) -> Tensor:
    """MAE's per-patch error: mean squared error over each patch's values.

    Computed in float32 whatever the dtype of *pred* (mixed precision).

    Args:
        pred: ``(..., L, P)`` predicted patches.
        target: ``(..., L, P)`` true patches.
        norm_pix_loss: Normalise each target patch to zero mean and unit
            variance first (MAE's ``--norm_pix_loss``).

    Returns:
        ``(..., L)`` errors.
    """
    target = target.float()
    if norm_pix_loss:
        # Same as MAE: (x - mean) / sqrt(var + 1e-6), unbiased variance.
        target = lightly_utils.normalize_mean_var(target, dim=-1, eps=1e-6)
    return (pred.float() - target).pow(2).mean(dim=-1)


def masked_reconstruction_loss(
    pred: Tensor, target: Tensor, mask: Tensor, norm_pix_loss: bool = True
) -> Tensor:
    """MAE's loss: :func:`patch_errors` averaged over the removed patches.

    Args:
        pred: ``(..., L, P)`` predicted patches.
        target: ``(..., L, P)`` true patches (e.g. from
            :func:`lightly.models.utils.patchify`).
        mask: ``(..., L)``, 1 = removed.
        norm_pix_loss: Normalise each target patch first.

    Returns:
        The scalar loss.
    """
    mask = mask.float()
    return (patch_errors(pred, target, norm_pix_loss) * mask).sum() / mask.sum()


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


class MaskedAutoencoder(nn.Module):
    """Template of the masked autoencoders ExPLoRA continues pre-training.

    ``forward`` checks the input, draws the masking, encodes the class token
    and the kept tokens (the encoder's own blocks and norms, gradient
    checkpointing included), decodes every token and computes the loss. The
    decoder (width, depth, heads as in the published checkpoints, MAE's
    initialisation) is built here; subclasses override the hooks:

    * :meth:`check_inputs` and :meth:`encoder_tokens` (patch embedding plus
      encodings, class token first);
    * :meth:`token_groups` (groups of tokens sharing positions, for the
      masking) and :attr:`shared_mask`;
    * :meth:`init_decoder_encodings`, :meth:`decoder_encodings`,
      :meth:`make_decoder_pred` and :meth:`predict` for the decoder;
    * :meth:`patch_targets` or :meth:`reconstruction` for the loss;
    * :meth:`convert_source_encoder` / :meth:`convert_source_decoder` for
      source checkpoints.

    Parameter names are ``encoder.<timm name>`` and ``decoder_*`` /
    ``mask_token``; :meth:`load_source_checkpoint` converts the flat published
    layout.

    .. versionadded:: 0.1
    """

    #: The ViT the adapter is applied to and that is exported.
    encoder: Any
    #: Decoder transformer blocks (timm ``Block`` with fused ``attn.qkv``).
    decoder_blocks: nn.ModuleList
    #: The decoder's fixed 2D position table (class token row first).
    decoder_pos_embed: Tensor
    #: Normalise target patches before the loss.
    norm_pix_loss: bool = True
    #: Weights loaded for ``weights=True``.
    default_weights: WeightsEnum | None = None
    #: Mask the same positions in every group of tokens (see :meth:`token_groups`).
    shared_mask: bool = False
    #: The encoder class this MAE is built around, and its name in messages.
    encoder_type: type[nn.Module] = nn.Module
    encoder_type_name: str = 'ViT'

    def __init__(
        self,
        encoder: nn.Module,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
    ) -> None:
        """Build the decoder around *encoder*.

        Args:
            encoder: A timm-style ViT (``patch_embed``, ``embed_dim``,
                ``cls_token``, ``blocks``, final ``norm``) of :attr:`encoder_type`.
            decoder_embed_dim: Decoder width.
            decoder_depth: Decoder blocks.
            decoder_num_heads: Decoder attention heads.
            decoder_mlp_ratio: Decoder MLP ratio.
            norm_pix_loss: Normalise target patches before the loss.

        Raises:
            TypeError: If *encoder* is not an :attr:`encoder_type`.
            ValueError: If it has no final norm.
        """
        self.check_encoder(encoder)
        super().__init__()
        self.encoder = encoder
        self.norm_pix_loss = norm_pix_loss
        embed = cast(Any, encoder).patch_embed
        self.patch_size = int(embed.patch_size[0])
        self.num_patches = int(embed.num_patches)
        self.decoder_embed = nn.Linear(
            int(cast(Any, encoder).embed_dim), decoder_embed_dim
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.init_decoder_encodings(decoder_embed_dim)
        self.decoder_blocks = build_decoder_blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = self.make_decoder_pred(decoder_embed_dim)
        # MAE's decoder initialisation: xavier-uniform linears, unit norms.
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    # Hooks -------------------------------------------------------------------

    def check_encoder(self, encoder: nn.Module) -> None:
        """Validate the encoder before anything is built.

        Args:
            encoder: The encoder.

        Raises:
            TypeError: If *encoder* is not an :attr:`encoder_type`.
            ValueError: If it has no final norm.
        """
        if not isinstance(encoder, self.encoder_type):
            raise TypeError(
                f'{type(self).__name__} needs a {self.encoder_type_name}, got '
                f'{type(encoder).__name__}'
            )
        if isinstance(getattr(encoder, 'norm', None), nn.Identity):
            raise ValueError(
                "the MAE encoder needs its final norm: build it with global_pool='token'"
            )

    def init_decoder_encodings(self, dim: int) -> None:
        """Register the decoder's fixed encoding tables.

        By default MAE's 2D sin-cos ``decoder_pos_embed`` of the encoder's
        grid, a frozen parameter as in MAE.

        Args:
            dim: Decoder width.
        """
        grid = int(self.encoder.patch_embed.grid_size[0])
        self.decoder_pos_embed = nn.Parameter(
            sincos_pos_embed_2d(dim, grid), requires_grad=False
        )

    @property
    def in_chans(self) -> int:
        """Channels of each image (encoders with one patch embedding)."""
        return int(self.encoder.patch_embed.proj.in_channels)

    def make_decoder_pred(self, dim: int) -> nn.Module:
        """The decoder's prediction head(s).

        Args:
            dim: Decoder width.

        Returns:
            The module registered as ``decoder_pred``: by default one linear
            head predicting each patch's pixels, ``patch_size**2 * in_chans``.
        """
        return nn.Linear(dim, self.patch_size**2 * self.in_chans)

    def check_inputs(self, x: Tensor, **inputs: Tensor) -> None:
        """Validate a batch before masking.

        Args:
            x: The images.
            **inputs: Model-specific inputs.
        """

    def encoder_tokens(self, x: Tensor, **inputs: Tensor) -> Tensor:
        """Patch-embed *x* and add the encodings; the class token comes first.

        Args:
            x: The images.
            **inputs: Model-specific inputs.

        Returns:
            ``(B, 1 + N, D)`` tokens (by default the encoder's ``_pos_embed``).
        """
        vit = self.encoder
        tokens: Tensor = vit._pos_embed(vit.patch_embed(x))
        return tokens

    def token_groups(self, x: Tensor) -> int:
        """Groups of ``num_patches`` tokens in an input (1 for one image).

        Args:
            x: The images.

        Returns:
            The number of groups.
        """
        return 1

    def decoder_encodings(self, **inputs: Tensor) -> Tensor:
        """The encodings added to the decoder tokens, class token first.

        Args:
            **inputs: Model-specific inputs.

        Returns:
            ``(1 or B, 1 + N, D_dec)`` (by default ``decoder_pos_embed``).
        """
        return self.decoder_pos_embed

    def predict(self, x: Tensor) -> Any:
        """Apply the prediction head(s) to the normed decoder patch tokens.

        Args:
            x: ``(B, N, D_dec)``.

        Returns:
            The predictions.
        """
        return self.decoder_pred(x)

    def patch_targets(self, x: Tensor) -> Tensor:
        """What the predictions are compared with.

        Args:
            x: The images.

        Returns:
            ``(B, N, P)`` patches (by default MAE's ``patchify``).
        """
        return lightly_utils.patchify(x, self.patch_size)

    def reconstruction(self, x: Tensor, pred: Any, masking: RandomMask) -> MAEOutput:
        """The loss and outputs of a forward pass.

        Args:
            x: The images.
            pred: Output of :meth:`predict`.
            masking: The masking used.

        Returns:
            Loss, predictions and mask.
        """
        target = self.patch_targets(x)
        loss = masked_reconstruction_loss(
            pred, target, masking.mask, self.norm_pix_loss
        )
        return MAEOutput(loss=loss, pred=pred, mask=masking.mask)

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
            Tensors keyed like ``self.encoder.state_dict()`` (by default
            :func:`~explora_geo.models.convert.convert_state_dict`).
        """
        return convert_state_dict(state_dict, self.encoder)

    def convert_source_decoder(self, state_dict: StateDict) -> StateDict:
        """Fit the decoder tensors of a source checkpoint to this model.

        Args:
            state_dict: ``decoder_*`` and ``mask_token`` tensors.

        Returns:
            Tensors keyed like this model's top-level decoder parameters (by
            default :func:`~explora_geo.models.convert.convert_mae_decoder`).
        """
        return convert_mae_decoder(state_dict, self.state_dict())

    # The template ------------------------------------------------------------

    def forward_encoder(
        self, x: Tensor, masking: RandomMask, **inputs: Tensor
    ) -> Tensor:
        """Encode the class token and the kept tokens.

        Args:
            x: The images.
            masking: Which tokens to keep.
            **inputs: Model-specific inputs.

        Returns:
            ``(B, 1 + K, D)`` normalised encoder tokens.
        """
        tokens = self.encoder_tokens(x, **inputs)
        kept = lightly_utils.get_at_index(tokens[:, 1:], masking.ids_keep)
        return encode_tokens(self.encoder, torch.cat([tokens[:, :1], kept], dim=1))

    def forward_decoder(
        self, latent: Tensor, masking: RandomMask, **inputs: Tensor
    ) -> Any:
        """Predict every token.

        Args:
            latent: Encoder output ``(B, 1 + K, D)``.
            masking: The masking used by the encoder.
            **inputs: Model-specific inputs.

        Returns:
            The output of :meth:`predict` for the ``N`` patch tokens.
        """
        x = self.decoder_embed(latent)
        patches = unshuffle_tokens(x[:, 1:], self.mask_token, masking.ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_encodings(**inputs)
        for block in self.decoder_blocks:
            x = block(x)
        return self.predict(self.decoder_norm(x)[:, 1:])

    def forward(
        self, x: Tensor, mask_ratio: float = 0.75, **inputs: Tensor
    ) -> MAEOutput:
        """Mask, encode, decode and compute the reconstruction loss.

        Args:
            x: Images (``(B, C, H, W)``; variants may take more dimensions).
            mask_ratio: Fraction of tokens removed.
            **inputs: Model-specific inputs, e.g. ``timestamps``.

        Returns:
            Loss, predictions and mask.
        """
        self.check_inputs(x, **inputs)
        masking = random_masking(
            x.shape[0],
            self.num_patches,
            mask_ratio,
            device=x.device,
            groups=self.token_groups(x),
            shared=self.shared_mask,
        )
        latent = self.forward_encoder(x, masking, **inputs)
        pred = self.forward_decoder(latent, masking, **inputs)
        return self.reconstruction(x, pred, masking)

    def load_source_checkpoint(
        self, checkpoint: Mapping[str, Any], source: str = 'MAE checkpoint'
    ) -> None:
        """Load a published MAE checkpoint (encoder and decoder), strictly.

        Args:
            checkpoint: The file's mapping (``{"model": ...}``) or a flat state
                dict in the published layout.
            source: Where it came from, for error messages.

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
        load_into(
            self,
            converted,
            source=source,
            # New heads are not part of a source checkpoint.
            allow_missing=('encoder.head.', 'encoder.fc_norm.'),
            strip_prefix='encoder.',
            hint=_decoder_hint,
        )


def _decoder_hint(missing: list[str]) -> str:
    if any(k.startswith('decoder_') or k == 'mask_token' for k in missing):
        return (
            ' (MAE pre-training needs a checkpoint with the decoder, e.g. '
            'mae_visualize_vit_large.pth, not the encoder-only release)'
        )
    return ''


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

    Built as ``MaskedAutoencoderViT(encoder, decoder_embed_dim=512, ...)``
    (the arguments of :class:`MaskedAutoencoder`).

    .. versionadded:: 0.1
    """

    encoder_type = VisionTransformer
    encoder_type_name = 'timm VisionTransformer'

    def check_encoder(self, encoder: nn.Module) -> None:
        """Also require one class token and a square patch grid.

        Args:
            encoder: The encoder.

        Raises:
            TypeError: If *encoder* is not a timm ``VisionTransformer``.
            ValueError: If its patch grid is not square, or it has no class
                token or final norm.
        """
        super().check_encoder(encoder)
        assert isinstance(encoder, VisionTransformer)
        grid = tuple(encoder.patch_embed.grid_size)
        if grid[0] != grid[1]:
            raise ValueError(f'MAE needs a square patch grid, got {grid}')
        if encoder.cls_token is None or encoder.num_prefix_tokens != 1:
            raise ValueError('MAE needs a ViT with exactly one prefix (class) token')

    def check_inputs(self, x: Tensor, **inputs: Tensor) -> None:
        """Require images with the encoder's channels.

        Args:
            x: Images ``(B, C, H, W)``.
            **inputs: Not used by this model.

        Raises:
            ValueError: If *x* does not have the encoder's channels.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f'expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}'
            )


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
            ``None`` for random initialisation (see
            :func:`~explora_geo.models.weights.resolve_weights`).
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
    resolved = resolve_weights(weights, model.default_weights, whole=True)
    if resolved is not None:
        checkpoint, source = resolved
        model.load_source_checkpoint(checkpoint, source=source)
    return model


def mae_builder(
    mae_class: Callable[..., MaskedAutoencoder],
    encoder_name: str,
    default_weights: WeightsEnum | None = None,
    encoder_defaults: Mapping[str, Any] | None = None,
    mae_arguments: tuple[str, ...] = (),
) -> Callable[..., MaskedAutoencoder]:
    """A builder for :func:`register_mae`: the timm encoder, then the MAE around it.

    Args:
        mae_class: The MAE class (called with the encoder and its arguments).
        encoder_name: timm name of the encoder.
        default_weights: Source weights for ``weights=True``.
        encoder_defaults: Encoder arguments the MAE needs (e.g. fixed encodings).
        mae_arguments: Builder keywords that go to *mae_class* besides
            ``norm_pix_loss`` and the ``decoder_*`` sizes; the rest go to the
            encoder.

    Returns:
        ``build(**kwargs)``: ``img_size``, ``in_chans``, ``norm_pix_loss``,
        ``decoder_*`` sizes, *mae_arguments* and timm arguments of the encoder.
    """

    def build(**kwargs: Any) -> MaskedAutoencoder:
        own = {
            k: kwargs.pop(k)
            for k in list(kwargs)
            if k.startswith('decoder_') or k in ('norm_pix_loss', *mae_arguments)
        }
        encoder = timm.create_model(
            encoder_name,
            pretrained=False,
            num_classes=0,
            **{**(encoder_defaults or {}), **kwargs},
        )
        model = mae_class(encoder, **own)
        model.default_weights = default_weights
        return model

    return build
