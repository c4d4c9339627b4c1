"""Object detection with ExPLoRA ViT backbones: ViTDet-style Faster R-CNN.

The ViT's last block is turned into a pyramid at strides 4, 8, 16, 32 (and 64
by subsampling) by ViTDet's simple feature pyramid, which feeds torchvision's
Faster R-CNN. TorchGeo's :class:`~torchgeo.tasks.ObjectDetection` provides the
steps and the mAP metrics; batches hold ``image``, ``bbox_xyxy`` and
``label``. As there, images are neither resized nor normalised inside the
model.

.. versionadded:: 0.1
"""

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchgeo.tasks import ObjectDetection
from torchgeo.tasks.utils import GeneralizedRCNNTransformNoOp
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..models.feature_pyramid import SimpleFeaturePyramid, ViTFeatureMaps
from .classification import DownstreamProtocol, FinetuneMode, check_finetune
from .protocols import LoRAConfig, ProtocolConfig

__all__ = ('ObjectDetectionTask', 'ViTDetBackbone')


class ViTDetBackbone(nn.Module):
    """A ViT with ViTDet's simple feature pyramid, as a torchvision detection backbone.

    Returns an ordered mapping of maps ``'0'`` to ``'3'`` (strides 4 to 32 for
    inputs whose size is a multiple of 32) and ``'pool'`` (stride 64), all with
    :attr:`out_channels` channels, as torchvision's detectors expect.

    .. versionadded:: 0.1
    """

    def __init__(
        self, vit: VisionTransformer, out_channels: int = 256, index: int = -1
    ) -> None:
        """Initialize a new ViTDetBackbone instance.

        Args:
            vit: A timm ViT.
            out_channels: Channels of every pyramid level.
            index: The ViT block whose output builds the pyramid (ViTDet: the last).
        """
        super().__init__()
        self.body = ViTFeatureMaps(vit, indices=[index], stride=16)
        self.fpn = SimpleFeaturePyramid(
            self.body.out_channels[0],
            scales=(4.0, 2.0, 1.0, 0.5),
            out_channels=out_channels,
        )
        self.extra = LastLevelMaxPool()
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Compute the pyramid.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            The levels by name, highest resolution first.
        """
        maps, _ = self.body(x)
        levels = self.fpn(maps)
        names = [str(i) for i in range(len(levels))]
        levels, names = self.extra(levels, levels, names)
        return OrderedDict(zip(names, levels, strict=True))


class ObjectDetectionTask(DownstreamProtocol, ObjectDetection):
    """Object detection with an ExPLoRA (or any timm) ViT backbone.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        model: Literal['faster-rcnn'] = 'faster-rcnn',
        backbone: str = 'explora_vitl_dino',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        num_classes: int = 2,
        trainable_layers: int = 3,
        lr: float = 1e-4,
        patience: int = 10,
        freeze_backbone: bool = False,
        finetune: FinetuneMode = 'lora',
        lora: LoRAConfig | Mapping[str, Any] = LoRAConfig(),
        protocol: ProtocolConfig | Mapping[str, Any] = ProtocolConfig(),
        feature_index: int = -1,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        dynamic_img_size: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        labels: list[str] | None = None,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        """Initialize a new ObjectDetectionTask instance.

        Args:
            model: ``'faster-rcnn'``.
            backbone: timm name of the ViT.
            weights: Backbone weights, as for
                :class:`~explora_geo.tasks.classification.ClassificationTask`.
            in_channels: Number of input channels.
            num_classes: Number of classes, including the background (0).
            trainable_layers: Unused (a ResNet option of the parent task, kept so
                that checkpoints' hyperparameters rebuild the task).
            lr: Learning rate (of the detector with layer-wise decay).
            patience: Patience of the learning-rate plateau scheduler.
            freeze_backbone: Same as ``finetune='linear_probe'``.
            finetune: ``'lora'`` (LoRA on the ViT; pyramid and detector train),
                ``'linear_probe'`` (frozen ViT) or ``'full'``.
            lora: The LoRA of ``'lora'``
                (:class:`~explora_geo.tasks.protocols.LoRAConfig` or its mapping).
            protocol: Optimiser, schedule and drop-path
                (:class:`~explora_geo.tasks.protocols.ProtocolConfig` or its
                mapping; no label smoothing: the losses are Faster R-CNN's).
            feature_index: ViT block that builds the pyramid.
            fpn_channels: Channels of the pyramid levels.
            anchor_sizes: Anchor size of each of the five levels (strides 4 to 64).
            aspect_ratios: Anchor aspect ratios at every level.
            dynamic_img_size: Build the ViT with timm's ``dynamic_img_size``
                and ``dynamic_img_pad`` (any input size); turn off for models
                without it (SatMAE's group-channel ViT).
            model_kwargs: Extra :func:`timm.create_model` arguments.
            labels: Class names, including the background (0), recorded in
                checkpoints; default the datamodule's ``classes``.
            normalization: How raw band values become model input
                (:meth:`~explora_geo.sensors.Normalization.to_dict`), recorded in
                checkpoints for prediction; default the datamodule's.

        Raises:
            ValueError: If *model*, *finetune* or *anchor_sizes* is invalid.
        """
        if model != 'faster-rcnn':
            raise ValueError(
                f"model must be 'faster-rcnn' for a ViT backbone, got {model!r}"
            )
        check_finetune(finetune)
        if len(anchor_sizes) != 5:
            raise ValueError(
                'anchor_sizes needs one size per pyramid level (5: strides 4 to '
                f'64), got {tuple(anchor_sizes)}'
            )
        super().__init__(**self.torchgeo_arguments(locals()))

    def configure_models(self) -> None:
        """Build the ViT, the pyramid and Faster R-CNN; load weights; set what trains."""
        h = self.hparams
        vit = self.build_vit(h['backbone'])
        backbone = ViTDetBackbone(
            vit,
            out_channels=h['fpn_channels'],
            index=h['feature_index'],
        )
        levels = len(backbone.fpn.scales) + 1
        anchors = AnchorGenerator(
            sizes=tuple((int(s),) for s in h['anchor_sizes']),
            aspect_ratios=(tuple(float(r) for r in h['aspect_ratios']),) * levels,
        )
        roi_pool = MultiScaleRoIAlign(
            featmap_names=[str(i) for i in range(levels - 1)],
            output_size=7,
            sampling_ratio=2,
        )
        self.model = FasterRCNN(
            backbone,
            h['num_classes'],
            rpn_anchor_generator=anchors,
            box_roi_pool=roi_pool,
        )
        self.model.transform = GeneralizedRCNNTransformNoOp()

    def decay_backbone(self) -> nn.Module:
        """The ViT that layer-wise decay runs over.

        Returns:
            The ViT under the head.
        """
        return cast(nn.Module, self.model.backbone.body.vit)
