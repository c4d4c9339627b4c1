"""Semantic segmentation with ExPLoRA ViT backbones: UPerNet and DPT heads.

segmentation-models-pytorch 0.6 builds its ViT models from a timm name, and two
of its assumptions do not hold for ExPLoRA backbones: its UPerNet wants a
hierarchical encoder (strides 4-32) and rejects plain ViTs, and its DPT
decoder upsamples by ``int(patch / 4)``, which breaks for DinoV2's 14 px
patches. :class:`ViTUPerNet` and :class:`ViTDPT` therefore feed smp's own
decoders and heads from :class:`~explora_geo.models.feature_pyramid.ViTFeatureMaps`
(token maps resampled to stride 16), so any patch size and, with timm's
``dynamic_img_size``, any input size divisible by 32 work.

.. versionadded:: 0.1
"""

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast, get_args

import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.dpt.decoder import (
    DPTDecoder,
    DPTSegmentationHead,
)
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from segmentation_models_pytorch.encoders.timm_vit import (
    sample_block_indices_uniformly,
)
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchgeo.tasks import SemanticSegmentation
from torchvision.models._api import WeightsEnum

from ..models.feature_pyramid import SimpleFeaturePyramid, ViTFeatureMaps
from .classification import DownstreamProtocol, FinetuneMode, check_finetune
from .protocols import LoRAConfig, ProtocolConfig

__all__ = ('SemanticSegmentationTask', 'ViTDPT', 'ViTUPerNet')

#: Segmentation heads available for ViT backbones.
SegmentationModel = Literal['upernet', 'dpt']


class _ViTSegmenter(nn.Module):
    """A ViT segmentation model whose logits are upsampled to the input size."""

    def __init__(self, vit: VisionTransformer, indices: Sequence[int] | None) -> None:
        """Read four blocks of *vit* as maps at stride 16.

        Args:
            vit: A timm ViT.
            indices: The blocks (default evenly spaced, ending at the last one).
        """
        super().__init__()
        if indices is None:
            indices = sample_block_indices_uniformly(4, len(vit.blocks))
        self.encoder = ViTFeatureMaps(vit, indices=indices, stride=16)

    def decode(self, x: Tensor) -> Tensor:
        """Logits at the decoder's resolution.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            Logits ``(B, num_classes, h, w)``.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Segment.

        Args:
            x: Images ``(B, C, H, W)``, H and W multiples of 32.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        logits = self.decode(x)
        if logits.shape[-2:] == x.shape[-2:]:
            return logits
        return F.interpolate(
            logits, size=x.shape[-2:], mode='bilinear', align_corners=False
        )


class ViTUPerNet(_ViTSegmenter):
    """UPerNet on a plain ViT: four evenly spaced blocks, a simple pyramid, smp's decoder.

    As in BEiT's and MAE's segmentation models, block outputs are resampled to
    strides 4, 8, 16 and 32 (deconvolutions and max pooling) and passed to
    UPerNet (PSP module + FPN). The logits are upsampled to the input size.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        vit: VisionTransformer,
        num_classes: int,
        indices: Sequence[int] | None = None,
        decoder_channels: int = 256,
    ) -> None:
        """Initialize a new ViTUPerNet instance.

        Args:
            vit: The timm ViT whose blocks become the pyramid's levels.
            num_classes: Output channels of the 1x1 segmentation head.
            indices: Four block indices feeding the levels, highest resolution
                first; default evenly spaced, ending at the last block.
            decoder_channels: Width of the UPerNet decoder.
        """
        super().__init__(vit, indices)
        self.neck = SimpleFeaturePyramid(self.encoder.out_channels[-1])
        # smp's decoder expects [1, 1/2, 1/4, ..., 1/32] and skips the first two.
        self.decoder = UPerNetDecoder(
            encoder_channels=[0, 0, *self.neck.out_channels],
            encoder_depth=5,
            decoder_channels=decoder_channels,
        )
        self.segmentation_head = SegmentationHead(
            decoder_channels, num_classes, kernel_size=1
        )

    def decode(self, x: Tensor) -> Tensor:
        """Logits at the decoder's resolution (see :meth:`_ViTSegmenter.forward`)."""
        maps, _ = self.encoder(x)
        levels = self.neck(maps)
        decoded = self.decoder([x, x, *levels])
        return cast(Tensor, self.segmentation_head(decoded))


class ViTDPT(_ViTSegmenter):
    """DPT (Ranftl et al., 2021) on a timm ViT, with smp's decoder and head.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        vit: VisionTransformer,
        num_classes: int,
        indices: Sequence[int] | None = None,
        decoder_channels: int = 256,
        readout: Literal['cat', 'add', 'ignore'] = 'cat',
    ) -> None:
        """Initialize a new ViTDPT instance.

        Args:
            vit: The timm ViT whose blocks DPT reassembles.
            num_classes: Output channels of DPT's segmentation head.
            indices: Four block indices (default evenly spaced).
            decoder_channels: Fusion width; the reassemble widths are 1, 2, 4
                and 4 times it (DPT's 256, 512, 1024, 1024 for 256).
            readout: How the class token enters the maps (see smp's DPT);
                ``'ignore'`` for a ViT without one, or whose maps are wider
                than its tokens.
        """
        super().__init__(vit, indices)
        count = len(self.encoder.indices)
        # The class token can join maps of the same width only (a group-channel
        # ViT's maps stack one width per group).
        if not self.encoder.has_prefix_tokens or set(self.encoder.out_channels) != {
            int(vit.embed_dim)
        }:
            readout = 'ignore'
        factors = (1, 2, 4, 4, 4, 4, 4, 4)[:count]
        self.decoder = DPTDecoder(
            encoder_out_channels=self.encoder.out_channels,
            encoder_output_strides=[self.encoder.stride] * count,
            encoder_has_prefix_tokens=self.encoder.has_prefix_tokens,
            readout=readout,
            intermediate_channels=[decoder_channels * f for f in factors],
            fusion_channels=decoder_channels,
        )
        self.segmentation_head = DPTSegmentationHead(decoder_channels, num_classes)

    def decode(self, x: Tensor) -> Tensor:
        """Logits at the decoder's resolution (see :meth:`_ViTSegmenter.forward`)."""
        maps, prefix = self.encoder(x)
        decoded = self.decoder(maps, prefix)
        return cast(Tensor, self.segmentation_head(decoded))


class SemanticSegmentationTask(DownstreamProtocol, SemanticSegmentation):
    """Semantic segmentation with an ExPLoRA (or any timm) ViT backbone.

    TorchGeo's :class:`~torchgeo.tasks.SemanticSegmentation` (losses, metrics,
    steps, prediction) with a ViT built and loaded by
    :func:`explora_geo.models.create_model` under a :class:`ViTUPerNet` or
    :class:`ViTDPT` head.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        model: SegmentationModel = 'upernet',
        backbone: str = 'explora_vitl_dino',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        task: Literal['binary', 'multiclass', 'multilabel'] = 'multiclass',
        num_classes: int | None = None,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        num_filters: int = 3,
        pos_weight: Tensor | None = None,
        loss: Literal['ce', 'bce', 'jaccard', 'focal', 'dice'] = 'ce',
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
        freeze_backbone: bool = False,
        freeze_decoder: bool = False,
        finetune: FinetuneMode = 'lora',
        lora: LoRAConfig | Mapping[str, Any] = LoRAConfig(),
        protocol: ProtocolConfig | Mapping[str, Any] = ProtocolConfig(),
        feature_indices: Sequence[int] | None = None,
        decoder_channels: int = 256,
        dynamic_img_size: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        """Initialize a new SemanticSegmentationTask instance.

        Args:
            model: ``'upernet'`` or ``'dpt'``.
            backbone: timm name of the ViT (a ``'tu-'`` prefix, as smp spells
                timm encoders, is accepted).
            weights: Backbone weights, as for
                :class:`~explora_geo.tasks.classification.ClassificationTask`.
            in_channels: Number of input channels.
            task: One of 'binary', 'multiclass', or 'multilabel'.
            num_classes: Number of prediction classes (only for ``task='multiclass'``).
            num_labels: Number of prediction labels (only for ``task='multilabel'``).
            labels: List of class names.
            num_filters: Unused (an FCN option of the parent task, kept so that
                checkpoints' hyperparameters rebuild the task).
            pos_weight: Weight of positive pixels in the ``'bce'`` loss.
            loss: ``'ce'``, ``'bce'``, ``'jaccard'``, ``'focal'`` or ``'dice'``
                (TorchGeo's pixel losses).
            class_weights: Per-class weights of the ``'ce'`` loss.
            ignore_index: Class of the pixels the loss and metrics skip
                (e.g. no-data).
            lr: Learning rate (of the decoder with layer-wise decay).
            patience: Patience of the learning-rate plateau scheduler.
            freeze_backbone: Same as ``finetune='linear_probe'``.
            freeze_decoder: Freeze the decoder (only the last layers train).
            finetune: ``'lora'`` (LoRA on the ViT; decoder and head train),
                ``'linear_probe'`` (frozen ViT) or ``'full'``.
            lora: The LoRA of ``'lora'``
                (:class:`~explora_geo.tasks.protocols.LoRAConfig` or its mapping).
            protocol: Optimiser, schedule, drop-path and label smoothing
                (:class:`~explora_geo.tasks.protocols.ProtocolConfig` or its
                mapping).
            feature_indices: Four ViT blocks feeding the decoder (default
                evenly spaced, ending at the last block).
            decoder_channels: Decoder width.
            dynamic_img_size: Build the ViT with timm's ``dynamic_img_size``
                and ``dynamic_img_pad``: any input size works (position
                embeddings are resampled, inputs padded to whole patches).
                Turn off for models without it (SatMAE's group-channel ViT).
            model_kwargs: Extra :func:`timm.create_model` arguments.
            normalization: How raw band values become model input
                (:meth:`~explora_geo.sensors.Normalization.to_dict`), recorded in
                checkpoints for prediction; default the datamodule's.

        Raises:
            ValueError: If *model* or *finetune* is invalid.
        """
        if model not in get_args(SegmentationModel):
            raise ValueError(
                f'model must be one of {get_args(SegmentationModel)} for a ViT '
                f'backbone, got {model!r}; use torchgeo.tasks.SemanticSegmentation '
                'for CNN backbones'
            )
        check_finetune(finetune)
        super().__init__(**self.torchgeo_arguments(locals()))

    def configure_models(self) -> None:
        """Build the ViT and the head, load the weights and set what trains."""
        h = self.hparams
        num_outputs = h['num_classes'] or h['num_labels'] or 1
        vit = self.build_vit(h['backbone'].removeprefix('tu-'))
        head = ViTUPerNet if h['model'] == 'upernet' else ViTDPT
        self.model = head(
            vit,
            num_outputs,
            indices=h['feature_indices'],
            decoder_channels=h['decoder_channels'],
        )
        if h['freeze_decoder']:
            self.model.decoder.requires_grad_(False)

    def decay_backbone(self) -> nn.Module:
        """The ViT that layer-wise decay runs over.

        Returns:
            The ViT under the head.
        """
        return cast(nn.Module, self.model.encoder.vit)
