"""Multi-scale feature maps from a plain ViT, for dense prediction heads.

A ViT computes one token grid at its patch stride. Dense heads (UPerNet, DPT,
Faster R-CNN) want maps at several strides. :class:`ViTFeatureMaps` takes the
tokens of chosen blocks as ``NCHW`` maps at a fixed stride, and
:class:`SimpleFeaturePyramid` turns them into a pyramid with deconvolutions and
pooling, the "simple feature pyramid" of ViTDet (Li et al., 2022), which is
also the neck of BEiT/MAE's UPerNet segmentation.

.. versionadded:: 0.1
"""

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ('SimpleFeaturePyramid', 'ViTFeatureMaps')


class ViTFeatureMaps(nn.Module):
    """Token maps of some blocks of a timm ViT, resampled to a fixed stride.

    DinoV2 ViTs have 14 px patches; pyramid heads and detection anchors assume
    power-of-two strides. With ``stride=16`` a 224 px input gives 14 x 14 maps
    whatever the patch size (16 x 16 patch tokens of DinoV2 are resampled
    bilinearly), so the pyramid levels have strides 4, 8, 16 and 32 exactly
    when the input size is a multiple of 32.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        vit: VisionTransformer,
        indices: int | Sequence[int] = 1,
        stride: int | None = 16,
        norm: bool = False,
    ) -> None:
        """Initialize a new ViTFeatureMaps instance.

        Args:
            vit: A timm ``VisionTransformer`` (anything with
                ``forward_intermediates``, ``patch_embed`` and ``embed_dim``).
            indices: Blocks to take: the last *n* blocks if an int, else 0-based
                block indices (negatives count from the end; a block may be
                repeated, e.g. four levels from a two-block ViT).
            stride: Output stride of the maps in input pixels; ``None`` keeps the
                patch grid.
            norm: Apply the ViT's final norm to every map.

        Raises:
            TypeError: If *vit* has no ``forward_intermediates``.
        """
        super().__init__()
        if not hasattr(vit, 'forward_intermediates'):
            raise TypeError(
                f'{type(vit).__name__} has no forward_intermediates(); a timm '
                'VisionTransformer is expected'
            )
        self.vit = vit
        depth = len(vit.blocks)
        if isinstance(indices, int):
            self.indices: list[int] = list(range(depth - indices, depth))
        else:
            self.indices = [i % depth for i in indices]
        patch = vit.patch_embed.patch_size
        self.stride = stride or int(patch[0])
        self.norm = norm
        # Channels per map: timm's feature_info when the model has it (a
        # group-channel ViT's maps stack its groups), else the width.
        info = getattr(vit, 'feature_info', None)
        self.out_channels: list[int] = [
            int(info[i]['num_chs']) if info else int(vit.embed_dim)
            for i in self.indices
        ]
        self.has_prefix_tokens = int(getattr(vit, 'num_prefix_tokens', 0)) > 0

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """Compute the maps.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            The maps ``(B, D, ceil(H / stride), ceil(W / stride))``, one per
            index, and the prefix (class) tokens ``(B, P, D)`` of the same
            blocks (``None`` for a ViT without prefix tokens).
        """
        # timm returns each block once, in block order.
        unique = sorted(set(self.indices))
        # With intermediates_only: a list of maps, or of (map, prefix) pairs.
        outputs: list[Any] = self.vit.forward_intermediates(  # type: ignore[assignment]
            x,
            indices=unique,
            norm=self.norm,
            stop_early=True,
            output_fmt='NCHW',
            intermediates_only=True,
            return_prefix_tokens=self.has_prefix_tokens,
        )
        order = [unique.index(i) for i in self.indices]
        if self.has_prefix_tokens:
            maps = [outputs[j][0] for j in order]
            prefix: list[Tensor | None] = [outputs[j][1] for j in order]
        else:
            maps = [outputs[j] for j in order]
            prefix = [None] * len(maps)
        size = (
            math.ceil(x.shape[-2] / self.stride),
            math.ceil(x.shape[-1] / self.stride),
        )
        maps = [
            m
            if m.shape[-2:] == size
            else F.interpolate(m, size=size, mode='bilinear', align_corners=False)
            for m in maps
        ]
        return maps, prefix


def _upsample(channels: int, factor: int) -> tuple[list[nn.Module], int]:
    """Deconvolutions that upsample by *factor* (2 or 4), halving channels each time."""
    layers: list[nn.Module] = []
    for i in range(int(math.log2(factor))):
        if i:
            layers += [LayerNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2))
        channels //= 2
    return layers, channels


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: deconvolutions up, max pooling down.

    Scale 4 is two stride-2 deconvolutions (with LayerNorm and GELU between),
    2 one deconvolution, 1 the identity and 0.5 a 2 x 2 max pooling; the
    deconvolutions halve the channels each time, as in ViTDet. With
    *out_channels* every level then gets a 1 x 1 and a 3 x 3 convolution, each
    followed by a LayerNorm (ViTDet's detection neck); without it the levels
    are returned as they are (for a decoder with its own lateral
    convolutions, e.g. UPerNet).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        in_channels: int,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        out_channels: int | None = None,
    ) -> None:
        """Initialize a new SimpleFeaturePyramid instance.

        Args:
            in_channels: Channels of the ViT maps (its embedding width).
            scales: Resampling factor of each level, highest resolution first;
                each one of 4, 2, 1 or 0.5.
            out_channels: Channels of every level after the projection
                convolutions; ``None`` for no projection.

        Raises:
            ValueError: If a scale is not supported.
        """
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.levels = nn.ModuleList()
        self.out_channels: list[int] = []
        for scale in self.scales:
            if scale in (4.0, 2.0):
                layers, channels = _upsample(in_channels, int(scale))
            elif scale == 1.0:
                layers, channels = [], in_channels
            elif scale == 0.5:
                layers, channels = [nn.MaxPool2d(2, stride=2)], in_channels
            else:
                raise ValueError(
                    f'unsupported pyramid scale {scale}; use 4, 2, 1 or 0.5'
                )
            if out_channels is not None:
                layers += [
                    Conv2dNormActivation(
                        channels,
                        out_channels,
                        1,
                        norm_layer=LayerNorm2d,
                        activation_layer=None,
                        bias=False,
                    ),
                    Conv2dNormActivation(
                        out_channels,
                        out_channels,
                        3,
                        norm_layer=LayerNorm2d,
                        activation_layer=None,
                        bias=False,
                    ),
                ]
                channels = out_channels
            self.levels.append(nn.Sequential(*layers))
            self.out_channels.append(channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Build the pyramid.

        Args:
            features: One map used for every level (ViTDet), or one map per
                level (e.g. from evenly spaced blocks, as BEiT's UPerNet).

        Returns:
            One map per scale, highest resolution first.

        Raises:
            ValueError: If the number of maps is neither 1 nor the number of scales.
        """
        if len(features) not in (1, len(self.levels)):
            raise ValueError(
                f'expected 1 or {len(self.levels)} feature maps, got {len(features)}'
            )
        if len(features) == 1:
            features = list(features) * len(self.levels)
        return [level(f) for level, f in zip(self.levels, features, strict=True)]
