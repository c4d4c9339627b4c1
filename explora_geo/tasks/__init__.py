"""TorchGeo tasks: ExPLoRA pre-training and downstream fine-tuning."""

from .callbacks import ExPLoRAExport
from .classification import ClassificationTask
from .detection import ObjectDetectionTask
from .explora_dinov2 import ExPLoRADINOv2
from .explora_mae import ExPLoRAMAE
from .knn_probe import KNNProbe
from .pretraining import (
    ExPLoRAPretrainingTask,
    NonFiniteLossError,
    OptimizationConfig,
)
from .protocols import LoRAConfig, ProtocolConfig
from .segmentation import SemanticSegmentationTask

__all__ = (
    'ClassificationTask',
    'ExPLoRADINOv2',
    'ExPLoRAExport',
    'ExPLoRAMAE',
    'ExPLoRAPretrainingTask',
    'KNNProbe',
    'LoRAConfig',
    'NonFiniteLossError',
    'ObjectDetectionTask',
    'OptimizationConfig',
    'ProtocolConfig',
    'SemanticSegmentationTask',
)
