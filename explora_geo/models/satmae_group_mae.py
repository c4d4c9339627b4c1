"""SatMAE's group-channel masked autoencoder.

.. versionadded:: 0.1
"""

from typing import Any, cast

import torch
from torch import Tensor, nn

from .checkpoints import StateDict
from .convert import convert_group_decoder, convert_group_state_dict
from .mae import MAEOutput, MaskedAutoencoder, RandomMask, patch_errors
from .pos_embed import position_dims, sincos_1d, sincos_pos_embed_2d
from .satmae_group import GroupChannelViT

__all__ = ('GroupChannelMAE', 'patchify_bands')


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
    encoder_type = GroupChannelViT
    encoder_type_name = 'GroupChannelViT'
    decoder_pos_embed: Tensor
    decoder_channel_embed: Tensor
    band_order: Tensor

    def __init__(
        self,
        encoder: GroupChannelViT,
        *,
        decoder_embed_dim: int = 512,
        decoder_channel_embed_dim: int = 128,
        spatial_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initialize a new GroupChannelMAE instance.

        Args:
            encoder: The group-channel ViT (with its final ``norm``: build it
                with ``global_pool='token'``).
            decoder_embed_dim: Decoder width.
            decoder_channel_embed_dim: Width of the decoder's group encoding.
            spatial_mask: Mask the same locations in every group.
            **kwargs: The other decoder sizes and ``norm_pix_loss`` (see
                :class:`~explora_geo.models.mae.MaskedAutoencoder`).

        Raises:
            TypeError: If *encoder* is not a :class:`GroupChannelViT`.
            ValueError: If it has no final norm or the widths do not fit.
        """
        position_dims(
            'decoder_embed_dim',
            decoder_embed_dim,
            'decoder_channel_embed_dim',
            decoder_channel_embed_dim,
        )
        self.decoder_channel_embed_dim = decoder_channel_embed_dim
        self.spatial_mask = self.shared_mask = spatial_mask
        super().__init__(encoder, decoder_embed_dim=decoder_embed_dim, **kwargs)
        embed = encoder.patch_embed
        # Position of each kept band in the group-after-group order.
        order = [embed.bands.index(b) for g in embed.groups for b in g]
        self.register_buffer(
            'band_order',
            torch.tensor(
                [order.index(i) for i in range(len(order))],
                device=self.decoder_pos_embed.device,
            ),
            persistent=False,
        )

    @property
    def group_sizes(self) -> list[int]:
        """Bands of each group."""
        return list(self.encoder.patch_embed.group_sizes)

    def init_decoder_encodings(self, dim: int) -> None:
        """Fixed 2D position table and group table (one extra row: the class token).

        Args:
            dim: Decoder width.
        """
        channel_dim = self.decoder_channel_embed_dim
        grid = self.encoder.patch_embed.grid_size[0]
        device = cast(Tensor, self.encoder.cls_token).device
        self.register_buffer(
            'decoder_pos_embed',
            sincos_pos_embed_2d(dim - channel_dim, grid).to(device),
        )
        channels = torch.arange(len(self.group_sizes) + 1, device=device)
        self.register_buffer(
            'decoder_channel_embed', sincos_1d(channel_dim, channels).unsqueeze(0)
        )

    def make_decoder_pred(self, dim: int) -> nn.Module:
        """One head per group, predicting that group's bands.

        Args:
            dim: Decoder width.

        Returns:
            The heads.
        """
        return nn.ModuleList(
            nn.Linear(dim, size * self.patch_size**2) for size in self.group_sizes
        )

    def decoder_trainable_patterns(self) -> tuple[str, ...]:
        """Decoder norms and the per-group prediction heads (new for multispectral input).

        Returns:
            ``fnmatch`` patterns.
        """
        return (*super().decoder_trainable_patterns(), 'decoder_pred.*')

    def check_inputs(self, x: Tensor, **inputs: Tensor) -> None:
        """Require a batch of images.

        Args:
            x: Images ``(B, C, H, W)``, ``C`` = all input bands or the kept ones.
            **inputs: Not used by this model.

        Raises:
            ValueError: If *x* is not a batch of images.
        """
        if x.ndim != 4:
            raise ValueError(
                f'expected images (B, C, H, W), got shape {tuple(x.shape)}'
            )

    def encoder_tokens(self, x: Tensor, **inputs: Tensor) -> Tensor:
        """The encoder's tokens of every group, class token first.

        Args:
            x: Images ``(B, C, H, W)``.
            **inputs: Not used by this model.

        Returns:
            ``(B, 1 + G*L, D)``.
        """
        return self.encoder.embed_tokens(x)

    def token_groups(self, x: Tensor) -> int:
        """The band groups: each location has one token per group.

        Args:
            x: The images.

        Returns:
            The number of groups.
        """
        return len(self.group_sizes)

    def decoder_encodings(self, **inputs: Tensor) -> Tensor:
        """The decoder's position + group encodings, ``(1, 1 + G*L, D_dec)``.

        Args:
            **inputs: Not used by this model.

        Returns:
            The encodings, class token first.
        """
        groups = len(self.group_sizes)
        pos = self.decoder_pos_embed[:, 1:].unsqueeze(1).expand(-1, groups, -1, -1)
        channel = self.decoder_channel_embed[:, :groups].unsqueeze(2)
        channel = channel.expand(-1, -1, pos.shape[2], -1)
        patches = torch.cat([pos, channel], dim=-1).flatten(1, 2)
        cls = torch.cat(
            [self.decoder_pos_embed[:, :1], self.decoder_channel_embed[:, -1:]], dim=-1
        )
        return torch.cat([cls, patches], dim=1)

    def predict(self, x: Tensor) -> list[Tensor]:
        """Predict every group's patches with its own head.

        Args:
            x: ``(B, G*L, D_dec)`` normed decoder tokens.

        Returns:
            One ``(B, L, C_g * p*p)`` prediction per group (channel-major).
        """
        x = x.unflatten(1, (len(self.group_sizes), -1))
        heads = cast(nn.ModuleList, self.decoder_pred)
        return [head(x[:, g]) for g, head in enumerate(heads)]

    def reconstruction(self, x: Tensor, pred: Any, masking: RandomMask) -> MAEOutput:
        """Pool the per-token errors of all groups over the removed tokens.

        Heads predict different numbers of bands, so the per-token errors are
        pooled here rather than per group.

        Args:
            x: The images.
            pred: One prediction per group.
            masking: The masking used.

        Returns:
            Loss, predictions ``(B, C_kept, L, p*p)`` (kept bands, in order) and
            mask ``(B, G, L)``.
        """
        mask = masking.mask.unflatten(1, (len(self.group_sizes), -1))
        errors, outputs = [], []
        for g, (group_pred, bands) in enumerate(
            zip(pred, self.encoder.patch_embed.split(x), strict=True)
        ):
            target = patchify_bands(bands, self.patch_size).flatten(2)
            errors.append(patch_errors(group_pred, target, self.norm_pix_loss))
            outputs.append(group_pred.unflatten(2, (self.group_sizes[g], -1)))
        loss = (torch.stack(errors, dim=1) * mask).sum() / mask.sum()
        pred_bands = torch.cat(outputs, dim=2).index_select(2, self.band_order)
        return MAEOutput(loss=loss, pred=pred_bands.transpose(1, 2), mask=mask)

    def convert_source_encoder(self, state_dict: StateDict) -> StateDict:
        """Convert source encoder tensors (see :func:`~explora_geo.models.convert.convert_group_state_dict`).

        Args:
            state_dict: Encoder tensors of a SatMAE, ExPLoRA or RGB MAE checkpoint.

        Returns:
            Tensors keyed like ``self.encoder.state_dict()``.
        """
        return convert_group_state_dict(state_dict, self.encoder)

    def convert_source_decoder(self, state_dict: StateDict) -> StateDict:
        """Fit source decoder tensors (see :func:`~explora_geo.models.convert.convert_group_decoder`).

        Args:
            state_dict: ``decoder_*`` and ``mask_token`` tensors.

        Returns:
            Tensors keyed like this model's decoder.
        """
        return convert_group_decoder(state_dict, self.state_dict())
