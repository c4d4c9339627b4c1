"""Self-supervised objectives: the DinoV2 pieces ExPLoRA continues pre-training with."""

from .dinov2_head import DINOv2Head, WeightNormLinear
from .dinov2_losses import DINOv2Loss, dino_loss, ibot_loss, sinkhorn_knopp
from .masking import BlockMasking
from .multicrop import MultiCrop
from .schedules import cosine_schedule
from .teacher import EMATeacher, swapped_tensors

__all__ = (
    'BlockMasking',
    'DINOv2Head',
    'DINOv2Loss',
    'EMATeacher',
    'MultiCrop',
    'WeightNormLinear',
    'cosine_schedule',
    'dino_loss',
    'ibot_loss',
    'sinkhorn_knopp',
    'swapped_tensors',
)
