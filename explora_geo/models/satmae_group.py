"""SatMAE's group-channel ViT for multispectral imagery.

The bands of an image are split into groups (for Sentinel-2: visible + NIR,
red edge, SWIR); every group has its own patch embedding
(:class:`~explora_geo.models.group_patch_embed.GroupPatchEmbed`), and the tokens
of all groups form one sequence behind a class token. Each token's encoding is
a 2D sin-cos position (``embed_dim - 256`` dims) concatenated with a 1D sin-cos
encoding of its group (256 dims), so a token knows where it is and which bands
it saw.

:class:`GroupChannelViT` is a timm ``VisionTransformer`` (blocks, norms, head,
pooling, gradient checkpointing and ``forward_intermediates`` are timm's, the
latter with group-aware feature maps) that only replaces the patch embedding
and the token encodings. Given 13 Sentinel-2 bands it drops B1, B9 and B10
itself; 10 bands in SatMAE's order are accepted too. Its masked autoencoder is
:class:`~explora_geo.models.satmae_group_mae.GroupChannelMAE`; the registered
names are in :mod:`explora_geo.models.catalog`.

.. versionadded:: 0.1
"""

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn

from .checkpoints import StateDict
from .convert import convert_group_state_dict
from .group_patch_embed import GroupPatchEmbed
from .pos_embed import sincos_1d
from .satmae_bands import SATMAE_BANDS, SATMAE_GROUPS, SENTINEL2_BANDS
from .satmae_vit import SatMAEViT

__all__ = ('CHANNEL_EMBED_DIM', 'GroupChannelViT')

#: Width of the group encoding in the encoder (the rest encodes position).
CHANNEL_EMBED_DIM = 256


class GroupChannelViT(SatMAEViT):
    """SatMAE's group-channel ViT as a timm ``VisionTransformer``.

    Tokens are ordered group-major (all patches of group 0, then group 1, ...)
    after the class token. With ``learnable_encodings`` (classifiers, as in
    SatMAE's fine-tuning model) ``pos_embed``, ``channel_embed`` and
    ``channel_cls_embed`` are parameters initialised with the sin-cos tables;
    without (the MAE encoder) ``pos_embed`` and ``channel_embed`` are fixed
    buffers and the class token gets no group encoding.

    ``forward_features`` returns the normed tokens ``(B, 1 + G*L, D)``;
    ``forward_head`` pools them (``global_pool='avg'``: mean of the patch
    tokens followed by ``fc_norm``, SatMAE's fine-tuning default;
    ``'token'``: the class token). ``forward_intermediates`` with
    ``output_fmt='NCHW'`` returns maps of ``G * D`` channels (the groups'
    tokens of one location side by side).

    .. versionadded:: 0.1
    """

    patch_embed: GroupPatchEmbed
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
            **kwargs: :class:`~explora_geo.models.satmae_vit.SatMAEViT` arguments
                (``learnable_encodings``, ``global_pool``, ``pos_embed_resample``)
                and timm ``VisionTransformer`` ones (``embed_dim``, ``depth``,
                ``num_heads``, ``num_classes``, ``drop_path_rate``...).

        Raises:
            ValueError: If the bands, groups or widths are inconsistent.
        """
        if in_chans is None:
            in_chans = len(input_bands)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            encoding=('channel_embed_dim', channel_embed_dim, 1),
            embed_layer=partial(
                GroupPatchEmbed, groups=groups, bands=bands, input_bands=input_bands
            ),
            **kwargs,
        )
        num_groups = self.patch_embed.num_groups
        self.add_encoding(
            'channel_embed',
            sincos_1d(channel_embed_dim, torch.arange(num_groups)).unsqueeze(0),
        )
        self.channel_cls_embed: Tensor | None = (
            nn.Parameter(
                torch.zeros(1, 1, channel_embed_dim, device=self.pos_embed.device)
            )
            if self.learnable_encodings
            else None
        )
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

    @torch.no_grad()
    def reset_encodings(self) -> None:
        """Fill the position and group encodings with their sin-cos values."""
        super().reset_encodings()
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

    def embed_tokens(self, x: Tensor, **inputs: Any) -> Tensor:
        """Embed every group's patches, add the encodings, prepend the class token.

        Args:
            x: ``(B, C, H, W)`` images, ``C`` = all input bands or the kept ones.
            **inputs: None are taken.

        Returns:
            ``(B, 1 + G*L, D)`` tokens, group-major.

        Raises:
            TypeError: If *inputs* is not empty.
        """
        if inputs:
            raise TypeError(
                f'{type(self).__name__} takes no inputs besides the images, got '
                f'{sorted(inputs)}'
            )
        cls_enc, patch_enc = self.token_encodings()
        patches = (self.patch_embed(x) + patch_enc).flatten(1, 2)
        cls = (cast(Tensor, self.cls_token) + cls_enc).expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1)

    def convert_checkpoint(self, checkpoint: Mapping[str, object]) -> StateDict:
        """This model's state dict from a checkpoint (see :func:`convert_group_state_dict`).

        Args:
            checkpoint: A file's top-level mapping or a bare state dict.

        Returns:
            Tensors for ``load_state_dict``.
        """
        return convert_group_state_dict(checkpoint, self)
