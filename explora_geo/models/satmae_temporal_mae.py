"""SatMAE's temporal masked autoencoder.

.. versionadded:: 0.1
"""

from typing import Any, cast

import torch
from lightly.models import utils as lightly_utils
from torch import Tensor

from .checkpoints import StateDict
from .convert import convert_temporal_decoder, convert_temporal_state_dict
from .mae import MAEOutput, MaskedAutoencoder, RandomMask
from .pos_embed import position_dims, sincos_pos_embed_2d
from .satmae_temporal import TemporalViT, check_timestamps, time_encoding

__all__ = ('TemporalMAE',)


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
    encoder_type = TemporalViT
    encoder_type_name = 'TemporalViT'
    decoder_pos_embed: Tensor

    def __init__(
        self,
        encoder: TemporalViT,
        *,
        decoder_embed_dim: int = 512,
        decoder_time_embed_dim: int = 64,
        same_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initialize a new TemporalMAE instance.

        Args:
            encoder: The temporal ViT (build it with ``global_pool='token'`` so
                it keeps its final norm).
            decoder_embed_dim: Decoder width.
            decoder_time_embed_dim: Width of each decoder time encoding.
            same_mask: Mask the same locations in every image.
            **kwargs: The other decoder sizes and ``norm_pix_loss`` (see
                :class:`~explora_geo.models.mae.MaskedAutoencoder`).

        Raises:
            TypeError: If *encoder* is not a :class:`TemporalViT`.
            ValueError: If it has no final norm or the widths do not fit.
        """
        position_dims(
            'decoder_embed_dim',
            decoder_embed_dim,
            'decoder_time_embed_dim',
            decoder_time_embed_dim,
            3,
        )
        self.decoder_time_embed_dim = decoder_time_embed_dim
        self.same_mask = self.shared_mask = same_mask
        super().__init__(encoder, decoder_embed_dim=decoder_embed_dim, **kwargs)

    def init_decoder_encodings(self, dim: int) -> None:
        """The fixed 2D position table (the time encodings are computed per batch).

        Args:
            dim: Decoder width.
        """
        pos_dim = dim - 3 * self.decoder_time_embed_dim
        grid = self.encoder.patch_embed.grid_size[0]
        device = cast(Tensor, self.encoder.cls_token).device
        self.register_buffer(
            'decoder_pos_embed', sincos_pos_embed_2d(pos_dim, grid).to(device)
        )

    def check_inputs(self, x: Tensor, **inputs: Tensor) -> None:
        """Require images of one place and their timestamps.

        Args:
            x: ``(B, T, C, H, W)``.
            **inputs: ``timestamps``: ``(B, T, 3)`` calendar values.

        Raises:
            ValueError: If the timestamps are missing or do not fit *x*.
        """
        check_timestamps(inputs.get('timestamps'), x, type(self).__name__)

    def encoder_tokens(self, x: Tensor, **inputs: Tensor) -> Tensor:
        """The encoder's tokens of every image, class token first.

        Args:
            x: ``(B, T, C, H, W)``.
            **inputs: ``timestamps``.

        Returns:
            ``(B, 1 + T*L, D)``.
        """
        return self.encoder.embed_tokens(x, **inputs)

    def token_groups(self, x: Tensor) -> int:
        """The images: each location has one token per image.

        Args:
            x: ``(B, T, C, H, W)``.

        Returns:
            ``T``.
        """
        return int(x.shape[1])

    def decoder_encodings(self, **inputs: Tensor) -> Tensor:
        """Position table and 64-dim year/month/hour encodings of every token.

        Args:
            **inputs: ``timestamps``.

        Returns:
            ``(B, 1 + T*L, D_dec)``, class token first (zero time).
        """
        timestamps = inputs['timestamps']
        b, t = timestamps.shape[:2]
        time = time_encoding(
            timestamps, self.decoder_time_embed_dim, self.encoder.year_offset
        )
        pos = self.decoder_pos_embed[:, 1:]
        patches = torch.cat(
            [
                pos.unsqueeze(1).expand(b, t, -1, -1),
                time.unsqueeze(2).expand(-1, -1, pos.shape[1], -1),
            ],
            dim=-1,
        ).flatten(1, 2)
        cls = torch.cat(
            [self.decoder_pos_embed[:, :1], pos.new_zeros(1, 1, time.shape[-1])], dim=-1
        )
        return torch.cat([cls.expand(b, -1, -1), patches], dim=1)

    def patch_targets(self, x: Tensor) -> Tensor:
        """MAE's patches of every image.

        Args:
            x: ``(B, T, C, H, W)``.

        Returns:
            ``(B, T*L, p*p*C)``.
        """
        target = lightly_utils.patchify(x.flatten(0, 1), self.patch_size)
        return target.unflatten(0, x.shape[:2]).flatten(1, 2)

    def reconstruction(self, x: Tensor, pred: Any, masking: RandomMask) -> MAEOutput:
        """MAE's loss; predictions and mask per image.

        Args:
            x: ``(B, T, C, H, W)``.
            pred: ``(B, T*L, p*p*C)``.
            masking: The masking used.

        Returns:
            Loss, predictions ``(B, T, L, p*p*C)`` and mask ``(B, T, L)``.
        """
        out = super().reconstruction(x, pred, masking)
        t = x.shape[1]
        return MAEOutput(
            loss=out.loss,
            pred=out.pred.unflatten(1, (t, -1)),
            mask=out.mask.unflatten(1, (t, -1)),
        )

    def convert_source_encoder(self, state_dict: StateDict) -> StateDict:
        """Convert source encoder tensors (see :func:`~explora_geo.models.convert.convert_temporal_state_dict`).

        Args:
            state_dict: Encoder tensors of a SatMAE temporal or RGB MAE checkpoint.

        Returns:
            Tensors keyed like ``self.encoder.state_dict()``.
        """
        return convert_temporal_state_dict(state_dict, self.encoder)

    def convert_source_decoder(self, state_dict: StateDict) -> StateDict:
        """Fit source decoder tensors (see :func:`~explora_geo.models.convert.convert_temporal_decoder`).

        Args:
            state_dict: ``decoder_*`` and ``mask_token`` tensors.

        Returns:
            Tensors keyed like this model's decoder.
        """
        return convert_temporal_decoder(state_dict, self.state_dict())
