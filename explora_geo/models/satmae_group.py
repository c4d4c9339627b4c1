"""SatMAE group-channel ViT for multispectral imagery, and its MAE.

The bands of an image are split into groups (for Sentinel-2: visible + NIR,
red edge, SWIR); every group has its own patch embedding, and the tokens of all
groups form one sequence behind a class token. Each token's encoding is a 2D
sin-cos position (``embed_dim - 256`` dims) concatenated with a 1D sin-cos
encoding of its group (256 dims), so a token knows where it is and which bands
it saw.

:class:`GroupChannelViT` is a timm ``VisionTransformer`` (blocks, norms, head,
pooling, gradient checkpointing and ``forward_intermediates`` are timm's, the
latter with group-aware feature maps) that only replaces the patch embedding
(:class:`GroupPatchEmbed`) and the token encodings. It is registered as ``explora_vitl_satmae_group`` and
``explora_vitb_satmae_group`` (96 px, patch 8). Given 13 Sentinel-2 bands it
drops B1, B9 and B10 itself; 10 bands in SatMAE's order are accepted too.

:class:`GroupChannelMAE` is the masked autoencoder around it (decoder width
512, 8 blocks, 16 heads, one prediction head per group), registered for
:func:`~explora_geo.models.mae.create_mae` under the same names.

.. versionadded:: 0.1
"""

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal, cast

import kornia.augmentation as K
import timm
import torch
from lightly.models import utils as lightly_utils
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from timm.layers import PatchEmbed
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
)
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchgeo.models.scale_mae import get_1d_sincos_pos_embed_from_grid_torch
from torchvision.models._api import Weights, WeightsEnum

from .checkpoints import (
    StateDict,
    fit_pos_embed,
    load_into,
    normalize_vit_keys,
    unwrap_state_dict,
)
from .mae import (
    MAEOutput,
    MaskedAutoencoder,
    RandomMask,
    build_decoder_blocks,
    random_masking,
    register_mae,
    sincos_pos_embed_2d,
    unshuffle_tokens,
)
from .pos_embed import PosEmbedResample, check_resample_rule
from .weights import (
    WEIGHT_ENUMS,
    ExPLoRAViTB16MAEWeights,
    ExPLoRAViTL16MAEWeights,
    ExPLoRAWeightsEnum,
)

__all__ = (
    'SATMAE_BANDS',
    'SATMAE_GROUPS',
    'SENTINEL2_BANDS',
    'ExPLoRAViTL8SatMAEGroupWeights',
    'GroupChannelMAE',
    'GroupChannelViT',
    'GroupPatchEmbed',
    'convert_group_state_dict',
    'encoder_state_dict',
    'explora_vitb_satmae_group',
    'explora_vitl_satmae_group',
    'fit_pooling_keys',
    'load_group_checkpoint',
    'mae_vitb_satmae_group',
    'mae_vitl_satmae_group',
    'normalize_decoder_keys',
    'patchify_bands',
    'sincos_1d',
)

#: Sentinel-2 L1C bands in the order of the fMoW-Sentinel GeoTIFFs.
SENTINEL2_BANDS: tuple[str, ...] = (
    'B1', 'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8', 'B8A', 'B9', 'B10', 'B11', 'B12',
)  # fmt: skip
#: The 10 bands SatMAE keeps (B1, B9 and B10 dropped), in input order.
SATMAE_BANDS: tuple[str, ...] = (
    'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8', 'B8A', 'B11', 'B12',
)  # fmt: skip
#: SatMAE's band groups: visible + NIR, red edge + narrow NIR, SWIR.
SATMAE_GROUPS: tuple[tuple[str, ...], ...] = (
    ('B2', 'B3', 'B4', 'B8'),
    ('B5', 'B6', 'B7', 'B8A'),
    ('B11', 'B12'),
)

# fMoW-Sentinel band statistics (B1 ... B12), used by SatMAE's normalisation.
_S2_MEAN = (
    1370.19, 1184.38, 1120.77, 1136.26, 1263.74, 1645.40, 1846.87,
    1762.60, 1972.62, 582.73, 14.77, 1732.16, 1247.92,
)  # fmt: skip
_S2_STD = (
    633.15, 650.28, 712.13, 965.23, 948.98, 1108.07, 1258.36,
    1233.15, 1364.39, 472.38, 14.31, 1310.37, 1087.60,
)  # fmt: skip

_HF = 'https://huggingface.co/samarkhanna/ExPLoRA/resolve/main'
_SATMAE = 'https://zenodo.org/record/7325339/files'
_PAPER = 'https://arxiv.org/abs/2406.10973'

#: Width of the group encoding in the encoder (the rest encodes position).
CHANNEL_EMBED_DIM = 256


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """MAE's 1D sin-cos encoding ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-2k/dim)``.

    Computed on the device of *positions* (torchgeo's implementation), so it
    serves both the fixed group tables and per-sample timestamps.

    Args:
        dim: Encoding width (even).
        positions: Positions of any shape.

    Returns:
        ``(positions.numel(), dim)`` float32 encodings.
    """
    return get_1d_sincos_pos_embed_from_grid_torch(dim, positions.float())


def _indices(bands: Sequence[str], within: Sequence[str], what: str) -> list[int]:
    unknown = [b for b in bands if b not in within]
    if unknown:
        raise ValueError(
            f'{what}: band(s) {unknown} are not among the configured bands {list(within)}'
        )
    return [list(within).index(b) for b in bands]


class GroupPatchEmbed(nn.ModuleList):
    """One patch embedding per band group; selects the bands of each group itself.

    The module is a list of timm ``PatchEmbed`` (state-dict keys
    ``patch_embed.<group>.proj.weight`` as in SatMAE). Its input may hold either
    ``input_bands`` (e.g. all 13 Sentinel-2 bands) or only ``bands`` (the kept
    ones); anything else raises a :class:`ValueError` naming both.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 96,
        patch_size: int = 8,
        in_chans: int | None = None,
        embed_dim: int = 1024,
        *,
        groups: Sequence[Sequence[str]] = SATMAE_GROUPS,
        bands: Sequence[str] = SATMAE_BANDS,
        input_bands: Sequence[str] = SENTINEL2_BANDS,
        **kwargs: Any,
    ) -> None:
        """Initialize a new GroupPatchEmbed instance.

        Args:
            img_size: Input size.
            patch_size: Patch size.
            in_chans: Channels the model was built for; must be
                ``len(input_bands)`` or ``len(bands)`` (``None``: either).
            embed_dim: Token width.
            groups: Band names of each group.
            bands: Names of the kept bands, in the order of a reduced input.
            input_bands: Names of all bands, in the order of a full input.
            **kwargs: Passed to each timm ``PatchEmbed`` (``bias``,
                ``dynamic_img_pad``, ``device``, ``dtype``).

        Raises:
            ValueError: If the bands or groups are inconsistent.
        """
        if not groups or any(not g for g in groups):
            raise ValueError(f'groups must be non-empty lists of band names: {groups}')
        flat = [b for g in groups for b in g]
        if len(set(flat)) != len(flat):
            raise ValueError(f'a band appears in more than one group: {groups}')
        _indices(bands, input_bands, 'bands')
        full = [_indices(g, input_bands, f'group {list(g)}') for g in groups]
        kept = [_indices(g, bands, f'group {list(g)}') for g in groups]
        if in_chans is not None and in_chans not in (len(input_bands), len(bands)):
            raise ValueError(
                f'in_chans={in_chans} does not match the configured bands: expected '
                f'{len(input_bands)} ({", ".join(input_bands)}) or {len(bands)} '
                f'({", ".join(bands)})'
            )
        super().__init__(
            PatchEmbed(img_size, patch_size, len(g), embed_dim, **kwargs)
            for g in groups
        )
        self.groups = tuple(tuple(g) for g in groups)
        self.bands = tuple(bands)
        self.input_bands = tuple(input_bands)
        first = cast(PatchEmbed, self[0])
        self.img_size = first.img_size
        self.patch_size = first.patch_size
        self.grid_size = first.grid_size
        self.num_patches = first.num_patches
        self.group_sizes = [len(g) for g in groups]
        # Bands of a full / reduced input, reordered group after group.
        self.register_buffer(
            'full_index', torch.tensor([i for g in full for i in g]), persistent=False
        )
        self.register_buffer(
            'kept_index', torch.tensor([i for g in kept for i in g]), persistent=False
        )
        self.init_weights()

    @property
    def num_groups(self) -> int:
        """Number of band groups."""
        return len(self.groups)

    def init_weights(self) -> None:
        """Initialise each projection like a linear layer (xavier-uniform), as MAE does."""
        for embed in self:
            weight = cast(PatchEmbed, embed).proj.weight
            nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Down-sampling factor of the token grid (the patch size)."""
        return cast(PatchEmbed, self[0]).feat_ratio(as_scalar)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid of an input of *img_size*."""
        return cast(PatchEmbed, self[0]).dynamic_feat_size(img_size)

    def group_indices(self, num_channels: int) -> Tensor:
        """Channel indices of the groups' bands, group after group.

        Args:
            num_channels: Channels of the input.

        Returns:
            Indices into the input's channels (split by ``group_sizes``).

        Raises:
            ValueError: If *num_channels* fits neither band list.
        """
        if num_channels == len(self.input_bands):
            return cast(Tensor, self.full_index)
        if num_channels == len(self.bands):
            return cast(Tensor, self.kept_index)
        raise ValueError(
            f'input has {num_channels} channels, but the model is configured for '
            f'{len(self.input_bands)} bands ({", ".join(self.input_bands)}) or the '
            f'{len(self.bands)} kept bands ({", ".join(self.bands)})'
        )

    def split(self, x: Tensor) -> list[Tensor]:
        """The bands of each group of an image batch.

        Args:
            x: ``(B, C, H, W)`` with ``C`` either band list's length.

        Returns:
            One ``(B, C_g, H, W)`` tensor per group.
        """
        grouped = x.index_select(1, self.group_indices(x.shape[1]))
        return list(grouped.split(self.group_sizes, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Embed every group's patches.

        Args:
            x: ``(B, C, H, W)`` image batch.

        Returns:
            ``(B, G, L, D)`` tokens: G groups of L patches.
        """
        return torch.stack(
            [embed(part) for embed, part in zip(self, self.split(x), strict=True)],
            dim=1,
        )


class GroupChannelViT(VisionTransformer):
    """SatMAE's group-channel ViT as a timm ``VisionTransformer``.

    Tokens are ordered group-major (all patches of group 0, then group 1, ...)
    after the class token. With ``learnable_encodings`` (classifiers, as in
    SatMAE's fine-tuning model) ``pos_embed``, ``channel_embed`` and
    ``channel_cls_embed`` are parameters initialised with the sin-cos tables;
    without (the MAE encoder) ``pos_embed`` and ``channel_embed`` are fixed
    buffers and the class token gets no encoding. Either way the state-dict
    keys are SatMAE's.

    ``forward_features`` returns the normed tokens ``(B, 1 + G*L, D)``;
    ``forward_head`` pools them (``global_pool='avg'``: mean of the patch
    tokens followed by ``fc_norm``, SatMAE's fine-tuning default;
    ``'token'``: the class token). ``forward_intermediates`` with
    ``output_fmt='NCHW'`` returns maps of ``G * D`` channels (the groups'
    tokens of one location side by side).

    .. versionadded:: 0.1
    """

    patch_embed: GroupPatchEmbed
    pos_embed: Tensor  # type: ignore[assignment]
    channel_embed: Tensor

    def __init__(
        self,
        img_size: int = 96,
        patch_size: int = 8,
        in_chans: int | None = None,
        *,
        bands: Sequence[str] = SATMAE_BANDS,
        groups: Sequence[Sequence[str]] = SATMAE_GROUPS,
        input_bands: Sequence[str] = SENTINEL2_BANDS,
        channel_embed_dim: int = CHANNEL_EMBED_DIM,
        learnable_encodings: bool = True,
        global_pool: Literal['', 'avg', 'token', 'max', 'avgmax'] = 'avg',
        pos_embed_resample: PosEmbedResample = 'mae',
        **kwargs: Any,
    ) -> None:
        """Initialize a new GroupChannelViT instance.

        Args:
            img_size: Input size (square).
            patch_size: Patch size.
            in_chans: Input channels: ``len(input_bands)`` (default) or
                ``len(bands)``; both are accepted at run time.
            bands: Kept bands, in the order of a reduced input.
            groups: Band names of each group.
            input_bands: All bands, in the order of a full input.
            channel_embed_dim: Width of the group encoding.
            learnable_encodings: Train the position/group encodings (classifier)
                or keep them fixed (MAE).
            global_pool: Pooling for the head.
            pos_embed_resample: Rule for resampling a checkpoint's position
                table (``'mae'``: SatMAE's; or ``'dinov2'``, ``'timm'``).
            **kwargs: timm ``VisionTransformer`` arguments (``embed_dim``,
                ``depth``, ``num_heads``, ``num_classes``, ``drop_path_rate``...).

        Raises:
            ValueError: If the bands, groups or widths are inconsistent.
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
        pos_dim = embed_dim - channel_embed_dim
        if pos_dim <= 0 or pos_dim % 4 or channel_embed_dim % 2:
            raise ValueError(
                f'embed_dim={embed_dim} and channel_embed_dim={channel_embed_dim} leave '
                f'{pos_dim} position dims; need a positive multiple of 4 (and an even '
                'channel_embed_dim)'
            )
        if in_chans is None:
            in_chans = len(input_bands)
        kwargs.pop('pos_embed', None)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            global_pool=global_pool,
            pos_embed='',
            embed_layer=partial(
                GroupPatchEmbed, groups=groups, bands=bands, input_bands=input_bands
            ),
            **kwargs,
        )
        self.learnable_encodings = learnable_encodings
        num_groups = self.patch_embed.num_groups
        grid = self.patch_embed.grid_size
        if grid[0] != grid[1]:
            raise ValueError(
                f'{type(self).__name__} needs a square input, got {img_size}'
            )
        device = cast(Tensor, self.cls_token).device
        pos = sincos_pos_embed_2d(pos_dim, grid[0]).to(device)
        channel = sincos_1d(channel_embed_dim, torch.arange(num_groups, device=device))
        channel = channel.unsqueeze(0)
        del self.pos_embed  # timm's plain attribute (None); replaced by the table
        if learnable_encodings:
            self.pos_embed = nn.Parameter(pos)
            self.channel_embed = nn.Parameter(channel)
            self.channel_cls_embed: Tensor | None = nn.Parameter(
                torch.zeros(1, 1, channel_embed_dim, device=device)
            )
        else:
            self.register_buffer('pos_embed', pos)
            self.register_buffer('channel_embed', channel)
            self.channel_cls_embed = None
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [
            {
                'module': f'blocks.{i}',
                'num_chs': num_groups * self.embed_dim,
                'reduction': reduction,
            }
            for i in range(len(self.blocks))
        ]

    @property
    def num_groups(self) -> int:
        """Number of band groups."""
        return self.patch_embed.num_groups

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        """Initialise as timm does, then refill the sin-cos tables.

        Args:
            mode: timm init mode.
            needs_reset: Reset modules that have ``reset_parameters``.
        """
        super().init_weights(mode, needs_reset)
        if getattr(self, 'channel_embed', None) is not None:
            self.reset_encodings()

    @torch.no_grad()
    def reset_encodings(self) -> None:
        """Fill the position and group encodings with their sin-cos values."""
        pos_dim = self.pos_embed.shape[-1]
        grid = self.patch_embed.grid_size[0]
        self.pos_embed.copy_(
            sincos_pos_embed_2d(pos_dim, grid).to(self.pos_embed.device)
        )
        num_groups, dim = self.channel_embed.shape[1:]
        table = sincos_1d(
            dim, torch.arange(num_groups, device=self.channel_embed.device)
        )
        self.channel_embed.copy_(table.unsqueeze(0))
        if self.channel_cls_embed is not None:
            self.channel_cls_embed.zero_()

    def token_encodings(self) -> tuple[Tensor, Tensor]:
        """The encodings added to the class token and to the patch tokens.

        Returns:
            ``(1, 1, D)`` for the class token and ``(1, G, L, D)`` for the patch
            tokens: position (first ``D - 256`` dims) and group (last 256).
        """
        num_groups = self.channel_embed.shape[1]
        pos = self.pos_embed[:, 1:].unsqueeze(1).expand(-1, num_groups, -1, -1)
        channel = self.channel_embed.unsqueeze(2).expand(-1, -1, pos.shape[2], -1)
        patches = torch.cat([pos, channel], dim=-1)
        cls_channel = (
            self.channel_cls_embed
            if self.channel_cls_embed is not None
            else self.channel_embed.new_zeros(1, 1, self.channel_embed.shape[-1])
        )
        return torch.cat([self.pos_embed[:, :1], cls_channel], dim=-1), patches

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Add encodings to ``(B, G, L, D)`` tokens and prepend the class token."""
        cls_enc, patch_enc = self.token_encodings()
        x = (x + patch_enc).flatten(1, 2)
        assert self.cls_token is not None
        cls = (self.cls_token + cls_enc).expand(x.shape[0], -1, -1)
        return cast(Tensor, self.pos_drop(torch.cat([cls, x], dim=1)))

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """Rearrange group-major patch tokens into a feature map.

        Args:
            tokens: ``(B, G*L, D)`` patch tokens (no class token).

        Returns:
            ``(B, G*D, H, W)``; channels ``g*D:(g+1)*D`` hold group g.
        """
        h, w = self.patch_embed.grid_size
        return (
            tokens.unflatten(1, (self.num_groups, h, w))
            .permute(0, 1, 4, 2, 3)
            .flatten(1, 2)
            .contiguous()
        )

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
        output_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run timm's ``forward_intermediates`` with group-aware ``NCHW`` maps.

        Args:
            x: ``(B, C, H, W)`` input.
            indices: Blocks to return (last n if int, all if None).
            return_prefix_tokens: Also return the class tokens.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: ``'NCHW'`` (maps of ``G*D`` channels) or ``'NLC'``.
            intermediates_only: Return only the intermediates.
            output_dict: Return a dict as timm does.
            **kwargs: Passed to timm.

        Returns:
            As timm's ``VisionTransformer.forward_intermediates``.
        """
        out: Any = super().forward_intermediates(
            x,
            indices,
            return_prefix_tokens=return_prefix_tokens,
            norm=norm,
            stop_early=stop_early,
            output_fmt='NLC',
            intermediates_only=intermediates_only,
            output_dict=output_dict,
            **kwargs,
        )
        if output_fmt == 'NLC':
            return out

        def convert(items: list[Any]) -> list[Any]:
            return [
                (self.tokens_to_map(i[0]), i[1])
                if isinstance(i, tuple)
                else self.tokens_to_map(i)
                for i in items
            ]

        if output_dict:
            out['image_intermediates'] = convert(out['image_intermediates'])
            return out
        if intermediates_only:
            return convert(out)
        final, intermediates = out
        return final, convert(intermediates)

    def convert_checkpoint(self, checkpoint: Mapping[str, object]) -> StateDict:
        """This model's state dict from a checkpoint (see :func:`convert_group_state_dict`).

        Args:
            checkpoint: A file's top-level mapping or a bare state dict.

        Returns:
            Tensors for ``load_state_dict``.
        """
        return convert_group_state_dict(checkpoint, self)

    def set_input_size(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: build a new model with the wanted ``img_size``.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot change its input size; build a new model '
            'with img_size=... (checkpoints are resampled on load)'
        )


# Model keys that a checkpoint may lack because the model adds them on top of
# what the checkpoint was trained with; they keep their initial values.
_FRESH = ('channel_cls_embed', 'fc_norm.')
# An RGB ViT checkpoint has no per-group embeddings or encodings.
_FRESH_FROM_RGB = ('patch_embed.', 'pos_embed', 'channel_embed')


def encoder_state_dict(checkpoint: Mapping[str, object]) -> StateDict:
    """Unwrap a checkpoint and normalise its encoder keys, keeping a classifier head.

    :func:`~explora_geo.models.checkpoints.normalize_vit_keys` drops heads (of
    self-supervised checkpoints); a fine-tuned SatMAE classifier's ``head`` is
    kept here so that it can be loaded.

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.

    Returns:
        Encoder tensors with timm names (decoder, mask token, split
        projections and LoRA factors removed), plus ``head.*`` if present.
    """
    raw = unwrap_state_dict(checkpoint)
    sd = normalize_vit_keys(raw)
    sd.update({k: v for k, v in raw.items() if k in ('head.weight', 'head.bias')})
    return sd


def fit_pooling_keys(state_dict: StateDict, model: VisionTransformer) -> StateDict:
    """Reconcile a checkpoint's final norm and head with *model*'s pooling.

    SatMAE's classifiers pool either the class token (final ``norm``) or the
    mean of the patch tokens (``fc_norm`` after pooling, the final norm
    removed). A pre-trained encoder (``norm``, no head) fits both: for average
    pooling its ``norm`` is dropped and ``fc_norm`` starts fresh, as SatMAE's
    fine-tuning does. A head whose shape differs from the model's is dropped.

    Args:
        state_dict: Converted tensors.
        model: The timm ViT to load into.

    Returns:
        The reconciled tensors.

    Raises:
        ValueError: If the checkpoint is a classifier trained with the other
            pooling (the message says which ``global_pool`` to build).
    """
    sd = dict(state_dict)
    has_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    has_norm = not isinstance(model.norm, nn.Identity)
    if any(k.startswith('fc_norm.') for k in sd) and not has_fc_norm:
        raise ValueError(
            'checkpoint was trained with average pooling (it has fc_norm); build the '
            "model with global_pool='avg'"
        )
    if any(k.startswith('norm.') for k in sd) and not has_norm:
        if 'head.weight' in sd:
            raise ValueError(
                'checkpoint is a classifier that pools the class token (it has norm and '
                "a head); build the model with global_pool='token'"
            )
        sd = {k: v for k, v in sd.items() if not k.startswith('norm.')}
    target = model.state_dict()
    for name in ('head.weight', 'head.bias'):
        if name in sd and (name not in target or target[name].shape != sd[name].shape):
            del sd[name]
    return sd


def convert_group_state_dict(
    checkpoint: Mapping[str, object], model: GroupChannelViT
) -> StateDict:
    """Convert a checkpoint to *model*'s keys and shapes.

    Accepts SatMAE's group-channel MAE and classifier checkpoints, ExPLoRA's
    multispectral releases (encoder-only, or full with split ``q_proj/k_proj/
    v_proj`` and stale ``lora_A/lora_B``, which are dropped), explora_geo
    exports, and plain RGB ViT/MAE checkpoints (then the patch embeddings and
    encodings are not taken, as ExPLoRA trains them from scratch). Keys the
    checkpoint cannot provide (``channel_cls_embed``, a fresh ``fc_norm``, and
    for RGB sources the embeddings) are filled with the model's current
    values, so the result loads strictly. A grid of another size is resampled
    by the model's ``pos_embed_resample`` rule (``'mae'``: bicubic without
    antialiasing, as SatMAE's ``interpolate_pos_embed``).

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.
        model: The model to load into.

    Returns:
        A complete state dict for ``model.load_state_dict`` (the head is left
        out when its shape differs).

    Raises:
        ValueError: If the checkpoint's pooling cannot fit the model's.
    """
    sd = encoder_state_dict(checkpoint)
    target = model.state_dict()
    fresh: tuple[str, ...] = _FRESH
    if 'patch_embed.proj.weight' in sd:  # an RGB ViT: single patch embedding
        for key in ('patch_embed.proj.weight', 'patch_embed.proj.bias', 'pos_embed'):
            sd.pop(key, None)
        fresh = _FRESH + _FRESH_FROM_RGB
    sd = fit_pooling_keys(sd, model)
    if 'pos_embed' in sd:
        sd['pos_embed'] = fit_pos_embed(sd['pos_embed'], model)
    for key, value in target.items():
        if key not in sd and key.startswith(fresh):
            sd[key] = value
    return sd


def load_group_checkpoint(
    model: GroupChannelViT, checkpoint: Mapping[str, object], source: str = 'checkpoint'
) -> GroupChannelViT:
    """Load any supported checkpoint into *model* strictly (see :func:`convert_group_state_dict`).

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
    load_into(model, convert_group_state_dict(checkpoint, model), source=source)
    return model


def patchify_bands(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into patches, band by band (SatMAE's channel-major layout).

    Args:
        images: ``(B, C, H, W)``.
        patch_size: Patch size ``p``.

    Returns:
        ``(B, L, C, p*p)``; patches in row-major grid order.
    """
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c, p * p)


def normalize_decoder_keys(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Drop stale LoRA factors and fuse split projections of MAE decoder blocks.

    Args:
        state_dict: ``decoder_*`` and ``mask_token`` tensors.

    Returns:
        The tensors with fused ``decoder_blocks.<i>.attn.qkv`` only.
    """
    # normalize_vit_keys works on encoder names; decoder blocks are renamed to
    # its ``blocks.`` and back so the same rules apply.
    blocks = {
        k.replace('decoder_blocks.', 'blocks.', 1): v
        for k, v in state_dict.items()
        if k.startswith('decoder_blocks.')
    }
    out = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith('decoder_blocks.') and 'lora_' not in k
    }
    for k, v in normalize_vit_keys(blocks).items():
        out[k.replace('blocks.', 'decoder_blocks.', 1)] = v
    return out


class GroupChannelMAE(MaskedAutoencoder):
    """SatMAE's group-channel masked autoencoder around a :class:`GroupChannelViT`.

    Tokens of all groups are masked jointly (so each location keeps a random
    subset of its groups) or, with ``spatial_mask``, one spatial mask is
    shared by all groups. The decoder (width 512, 8 blocks, 16 heads) adds a
    fixed 2D position table (``decoder_embed_dim - 128`` dims) and a fixed
    group table (128 dims, one extra row for the class token) and predicts
    each group's bands with its own head ``decoder_pred.<group>``. The loss is
    MAE's squared error on removed tokens, each token's error averaged over
    its group's pixels.

    Each head predicts its own group's bands, in the group's order. (SatMAE's
    reference compares the concatenated group predictions against targets in
    band order, which pairs some heads with other groups' bands when groups
    are not contiguous; its released decoder heads therefore do not predict
    the bands their group saw.) With ``norm_pix_loss`` each token's target is
    normalised over its group's pixels.

    ``forward`` returns ``pred`` as ``(B, C, L, p*p)`` with the channels in the
    order of the encoder's kept ``bands`` and ``mask`` as ``(B, G, L)``.

    .. versionadded:: 0.1
    """

    encoder: GroupChannelViT
    decoder_pos_embed: Tensor
    decoder_channel_embed: Tensor

    def __init__(
        self,
        encoder: GroupChannelViT,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        decoder_channel_embed_dim: int = 128,
        norm_pix_loss: bool = True,
        spatial_mask: bool = False,
    ) -> None:
        """Initialize a new GroupChannelMAE instance.

        Args:
            encoder: The group-channel ViT (with its final ``norm``: build it
                with ``global_pool='token'``).
            decoder_embed_dim: Decoder width.
            decoder_depth: Decoder blocks.
            decoder_num_heads: Decoder attention heads.
            decoder_mlp_ratio: Decoder MLP ratio.
            decoder_channel_embed_dim: Width of the decoder's group encoding.
            norm_pix_loss: Normalise target patches before the loss.
            spatial_mask: Mask the same locations in every group.

        Raises:
            TypeError: If *encoder* is not a :class:`GroupChannelViT`.
            ValueError: If it has no final norm or the widths do not fit.
        """
        super().__init__()
        if not isinstance(encoder, GroupChannelViT):
            raise TypeError(
                f'GroupChannelMAE needs a GroupChannelViT, got {type(encoder).__name__}'
            )
        if isinstance(encoder.norm, nn.Identity):
            raise ValueError(
                "the MAE encoder needs its final norm: build it with global_pool='token'"
            )
        pos_dim = decoder_embed_dim - decoder_channel_embed_dim
        if pos_dim <= 0 or pos_dim % 4 or decoder_channel_embed_dim % 2:
            raise ValueError(
                f'decoder_embed_dim={decoder_embed_dim} and decoder_channel_embed_dim='
                f'{decoder_channel_embed_dim} leave {pos_dim} position dims; need a '
                'positive multiple of 4'
            )
        self.encoder = encoder
        self.norm_pix_loss = norm_pix_loss
        self.spatial_mask = spatial_mask
        embed = encoder.patch_embed
        self.patch_size = int(embed.patch_size[0])
        self.num_patches = int(embed.num_patches)
        self.group_sizes = list(embed.group_sizes)
        num_groups = embed.num_groups
        device = cast(Tensor, encoder.cls_token).device

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            'decoder_pos_embed',
            sincos_pos_embed_2d(pos_dim, embed.grid_size[0]).to(device),
        )
        # One more row than groups: the class token's "group".
        channels = torch.arange(num_groups + 1, device=device)
        self.register_buffer(
            'decoder_channel_embed',
            sincos_1d(decoder_channel_embed_dim, channels).unsqueeze(0),
        )
        self.decoder_blocks = build_decoder_blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.ModuleList(
            nn.Linear(decoder_embed_dim, size * self.patch_size**2)
            for size in self.group_sizes
        )
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        # Position of each kept band in the group-after-group order.
        order = [embed.bands.index(b) for g in embed.groups for b in g]
        self.register_buffer(
            'band_order',
            torch.tensor([order.index(i) for i in range(len(order))], device=device),
            persistent=False,
        )

    def decoder_trainable_patterns(self) -> tuple[str, ...]:
        """Decoder norms and the per-group prediction heads (new for multispectral input).

        Returns:
            ``fnmatch`` patterns.
        """
        return (*super().decoder_trainable_patterns(), 'decoder_pred.*')

    def draw_mask(
        self, batch_size: int, mask_ratio: float, device: torch.device
    ) -> RandomMask:
        """Draw the masking of the ``G * L`` group tokens.

        Args:
            batch_size: ``B``.
            mask_ratio: Fraction of tokens removed.
            device: Where to create it.

        Returns:
            A masking over group-major token positions.
        """
        groups = len(self.group_sizes)
        num = self.num_patches
        if not self.spatial_mask:
            return random_masking(batch_size, groups * num, mask_ratio, device)
        spatial = random_masking(batch_size, num, mask_ratio, device)
        # Keep the same locations in every group: [kept of all groups, removed of all].
        shuffle = torch.argsort(spatial.ids_restore, dim=1)
        keep = spatial.ids_keep.shape[1]
        kept = [shuffle[:, :keep] + g * num for g in range(groups)]
        removed = [shuffle[:, keep:] + g * num for g in range(groups)]
        full_shuffle = torch.cat(kept + removed, dim=1)
        return RandomMask(
            ids_keep=full_shuffle[:, : groups * keep],
            ids_restore=torch.argsort(full_shuffle, dim=1),
            mask=spatial.mask.repeat(1, groups),
        )

    def forward_encoder(self, x: Tensor, masking: RandomMask) -> Tensor:
        """Encode the class token and the kept group tokens.

        Args:
            x: Images ``(B, C, H, W)``.
            masking: Which group tokens to keep.

        Returns:
            ``(B, 1 + K, D)`` normalised encoder tokens.
        """
        vit = self.encoder
        cls_enc, patch_enc = vit.token_encodings()
        tokens = (vit.patch_embed(x) + patch_enc).flatten(1, 2)
        kept = lightly_utils.get_at_index(tokens, masking.ids_keep)
        cls = (cast(Tensor, vit.cls_token) + cls_enc).expand(x.shape[0], -1, -1)
        tokens = vit.norm_pre(torch.cat([cls, kept], dim=1))
        if vit.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(vit.blocks, tokens)
        else:
            tokens = vit.blocks(tokens)
        return cast(Tensor, vit.norm(tokens))

    def decoder_encodings(self) -> Tensor:
        """The decoder's position + group encodings, ``(1, 1 + G*L, D_dec)``."""
        groups = len(self.group_sizes)
        pos = self.decoder_pos_embed[:, 1:].unsqueeze(1).expand(-1, groups, -1, -1)
        channel = self.decoder_channel_embed[:, :groups].unsqueeze(2)
        channel = channel.expand(-1, -1, pos.shape[2], -1)
        patches = torch.cat([pos, channel], dim=-1).flatten(1, 2)
        cls = torch.cat(
            [self.decoder_pos_embed[:, :1], self.decoder_channel_embed[:, -1:]], dim=-1
        )
        return torch.cat([cls, patches], dim=1)

    def forward_decoder(self, latent: Tensor, masking: RandomMask) -> list[Tensor]:
        """Predict every group's patches.

        Args:
            latent: Encoder output ``(B, 1 + K, D)``.
            masking: The masking used by the encoder.

        Returns:
            One ``(B, L, C_g * p*p)`` prediction per group (channel-major).
        """
        x = self.decoder_embed(latent)
        patches = unshuffle_tokens(x[:, 1:], self.mask_token, masking.ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_encodings()
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, 1:].unflatten(1, (len(self.group_sizes), -1))
        return [head(x[:, g]) for g, head in enumerate(self.decoder_pred)]

    def forward(
        self, x: Tensor, mask_ratio: float = 0.75, **extra: Tensor
    ) -> MAEOutput:
        """Mask, encode, decode and compute the reconstruction loss.

        Args:
            x: Images ``(B, C, H, W)``, ``C`` = all input bands or the kept ones.
            mask_ratio: Fraction of group tokens removed.
            **extra: Not used by this model.

        Returns:
            Loss, predictions ``(B, C_kept, L, p*p)`` (kept bands, in order) and
            mask ``(B, G, L)``.

        Raises:
            ValueError: If *x* is not a batch of images with the configured bands.
        """
        if x.ndim != 4:
            raise ValueError(
                f'expected images (B, C, H, W), got shape {tuple(x.shape)}'
            )
        masking = self.draw_mask(x.shape[0], mask_ratio, x.device)
        latent = self.forward_encoder(x, masking)
        preds = self.forward_decoder(latent, masking)
        mask = masking.mask.unflatten(1, (len(self.group_sizes), -1))
        # Heads predict different numbers of bands, so the per-token errors are
        # pooled here rather than per group (masked_reconstruction_loss averages
        # each call).
        errors, outputs = [], []
        for g, (pred, bands) in enumerate(
            zip(preds, self.encoder.patch_embed.split(x), strict=True)
        ):
            target = patchify_bands(bands, self.patch_size).flatten(2).float()
            if self.norm_pix_loss:
                target = lightly_utils.normalize_mean_var(target, dim=-1, eps=1e-6)
            errors.append((pred.float() - target).pow(2).mean(dim=-1))
            outputs.append(pred.unflatten(2, (self.group_sizes[g], -1)))
        loss = (torch.stack(errors, dim=1) * mask).sum() / mask.sum()
        pred_bands = torch.cat(outputs, dim=2).index_select(
            2, cast(Tensor, self.band_order)
        )
        return MAEOutput(loss=loss, pred=pred_bands.transpose(1, 2), mask=mask)

    def convert_source_encoder(self, state_dict: StateDict) -> StateDict:
        """Convert source encoder tensors (see :func:`convert_group_state_dict`).

        Args:
            state_dict: Encoder tensors of a SatMAE, ExPLoRA or RGB MAE checkpoint.

        Returns:
            Tensors keyed like ``self.encoder.state_dict()``.
        """
        return convert_group_state_dict(state_dict, self.encoder)

    def convert_source_decoder(self, state_dict: StateDict) -> StateDict:
        """Fit source decoder tensors to this model.

        An RGB MAE decoder provides everything but the prediction heads, which
        keep their initial values (trained from scratch, as ExPLoRA does); the
        fixed sin-cos tables of another size are recomputed for this model.

        Args:
            state_dict: ``decoder_*`` and ``mask_token`` tensors.

        Returns:
            Tensors keyed like this model's decoder.
        """
        out = normalize_decoder_keys(state_dict)
        own = self.state_dict()
        if 'decoder_pred.weight' in out:  # RGB MAE: one pixel head
            del out['decoder_pred.weight']
            out.pop('decoder_pred.bias', None)
            out.update({k: v for k, v in own.items() if k.startswith('decoder_pred.')})
        for key in ('decoder_pos_embed', 'decoder_channel_embed'):
            if key not in out or out[key].shape != own[key].shape:
                out[key] = own[key]
        return out


def _build_group_mae(
    name: str,
    default_weights: WeightsEnum,
    img_size: int = 96,
    in_chans: int | None = None,
    norm_pix_loss: bool = True,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    decoder_num_heads: int = 16,
    decoder_mlp_ratio: float = 4.0,
    decoder_channel_embed_dim: int = 128,
    spatial_mask: bool = False,
    **timm_kwargs: Any,
) -> GroupChannelMAE:
    encoder = timm.create_model(
        name,
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        in_chans=in_chans,
        global_pool='token',
        learnable_encodings=False,
        **timm_kwargs,
    )
    model = GroupChannelMAE(
        cast(GroupChannelViT, encoder),
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        decoder_mlp_ratio=decoder_mlp_ratio,
        decoder_channel_embed_dim=decoder_channel_embed_dim,
        norm_pix_loss=norm_pix_loss,
        spatial_mask=spatial_mask,
    )
    model.default_weights = default_weights
    return model


@register_mae('explora_vitl_satmae_group')
def mae_vitl_satmae_group(**kwargs: Any) -> GroupChannelMAE:
    """Group-channel MAE ViT-L/8 (M-ExPLoRA on Sentinel-2).

    Args:
        **kwargs: ``img_size``, ``in_chans``, ``norm_pix_loss``, ``decoder_*``
            sizes, ``spatial_mask`` and :class:`GroupChannelViT` arguments.

    Returns:
        The model (default source weights: the RGB ``mae_visualize_vit_large.pth``,
        as ExPLoRA starts from it).
    """
    return _build_group_mae(
        'explora_vitl_satmae_group', ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL, **kwargs
    )


@register_mae('explora_vitb_satmae_group')
def mae_vitb_satmae_group(**kwargs: Any) -> GroupChannelMAE:
    """Group-channel MAE ViT-B/8.

    Args:
        **kwargs: As :func:`mae_vitl_satmae_group`.

    Returns:
        The model (default source weights: ``mae_visualize_vit_base.pth``).
    """
    return _build_group_mae(
        'explora_vitb_satmae_group', ExPLoRAViTB16MAEWeights.MAE_IN1K_PIXEL, **kwargs
    )


def _cfg(url: str = '', **kwargs: Any) -> dict[str, Any]:
    return {
        'url': url,
        'num_classes': 0,
        'input_size': (len(SENTINEL2_BANDS), 96, 96),
        'pool_size': None,
        'crop_pct': 1.0,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': tuple(m - 2 * s for m, s in zip(_S2_MEAN, _S2_STD, strict=True)),
        'std': tuple(4 * s for s in _S2_STD),
        # The group projections never need timm's RGB input-conv adaptation.
        'first_conv': None,
        'classifier': 'head',
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        'explora_vitl_satmae_group.fmow_sentinel': _cfg(
            f'{_HF}/explora_mae_multispectral/explora_mae_fmow_sentinel_encoder_only.pth'
        ),
        'explora_vitl_satmae_group.satmae_fmow_sentinel': _cfg(
            f'{_SATMAE}/pretrain-vit-large-e199.pth'
        ),
        'explora_vitb_satmae_group.untrained': _cfg(),
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> GroupChannelViT:
    out_indices = kwargs.pop('out_indices', 3)
    model: GroupChannelViT = build_model_with_cfg(
        GroupChannelViT,
        variant,
        pretrained,
        pretrained_filter_fn=convert_group_state_dict,
        feature_cfg={'out_indices': out_indices, 'feature_cls': 'getter'},
        **kwargs,
    )
    return model


@register_model
def explora_vitl_satmae_group(
    pretrained: bool = False, **kwargs: Any
) -> GroupChannelViT:
    """SatMAE group-channel ViT-L/8 for 13-band Sentinel-2 (96 px, 3 groups, 432 tokens).

    Args:
        pretrained: Load the default pretrained weights (ExPLoRA M-[1,L]-r32 on
            fMoW-Sentinel).
        **kwargs: :class:`GroupChannelViT` arguments.

    Returns:
        The model.
    """
    args = {'embed_dim': 1024, 'depth': 24, 'num_heads': 16}
    return _create('explora_vitl_satmae_group', pretrained, **{**args, **kwargs})


@register_model
def explora_vitb_satmae_group(
    pretrained: bool = False, **kwargs: Any
) -> GroupChannelViT:
    """SatMAE group-channel ViT-B/8 for 13-band Sentinel-2 (no released weights).

    Args:
        pretrained: Must be False (no weights are published for this size).
        **kwargs: :class:`GroupChannelViT` arguments.

    Returns:
        The model.
    """
    args = {'embed_dim': 768, 'depth': 12, 'num_heads': 12}
    return _create('explora_vitb_satmae_group', pretrained, **{**args, **kwargs})


class _Clamp(nn.Module):
    """Clip values into ``[0, 1]``, the last step of SatMAE's normalisation."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


#: SatMAE's Sentinel-2 normalisation of 13-band input: clip((x - (mu - 2 sd)) / (4 sd), 0, 1).
_sentinel_transforms = nn.Sequential(
    K.Normalize(
        mean=torch.tensor(_S2_MEAN) - 2 * torch.tensor(_S2_STD),
        std=4 * torch.tensor(_S2_STD),
    ),
    _Clamp(),
)


def _meta(**extra: Any) -> dict[str, Any]:
    return {
        'model': 'explora_vitl_satmae_group',
        'dataset': 'fMoW-Sentinel',
        'in_chans': len(SENTINEL2_BANDS),
        'bands': SENTINEL2_BANDS,
        'img_size': 96,
        'publication': _PAPER,
        **extra,
    }


class ExPLoRAViTL8SatMAEGroupWeights(ExPLoRAWeightsEnum):
    """Group-channel ViT-L/8 weights for 13-band Sentinel-2 (fMoW-Sentinel).

    ``FMOW_SENTINEL`` is ExPLoRA M-[1,L]-r32 (encoder only, LoRA merged);
    ``FMOW_SENTINEL_FULL`` the same run's full MAE checkpoint (its decoder and
    stale adapter tensors are dropped on load); ``SATMAE_FMOW_SENTINEL`` SatMAE's
    fully pre-trained MAE. ``get_state_dict`` returns SatMAE's key names; load
    them with :func:`load_group_checkpoint` (or any loader that tolerates the
    fresh ``channel_cls_embed``/``fc_norm``, e.g. TorchGeo's tasks).

    .. versionadded:: 0.1
    """

    FMOW_SENTINEL = Weights(
        url=f'{_HF}/explora_mae_multispectral/explora_mae_fmow_sentinel_encoder_only.pth',
        transforms=_sentinel_transforms,
        meta=_meta(layout='encoder'),
    )
    FMOW_SENTINEL_FULL = Weights(
        url=f'{_HF}/explora_mae_multispectral/explora_mae_fmow_sentinel.pth',
        transforms=_sentinel_transforms,
        meta=_meta(layout='mae+decoder'),
    )
    SATMAE_FMOW_SENTINEL = Weights(
        url=f'{_SATMAE}/pretrain-vit-large-e199.pth',
        transforms=_sentinel_transforms,
        meta=_meta(layout='satmae-mae', publication='https://arxiv.org/abs/2207.08051'),
    )


# Make the members known to get_weight (and so to load_weights by name).
if ExPLoRAViTL8SatMAEGroupWeights not in WEIGHT_ENUMS:
    WEIGHT_ENUMS.append(ExPLoRAViTL8SatMAEGroupWeights)
