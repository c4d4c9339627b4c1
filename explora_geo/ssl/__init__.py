"""Self-supervised objectives ExPLoRA continues pre-training with: DinoV2 and MAE."""

from .dinov2 import DINOv2Config, DINOv2Objective, vit_tokens
from .dinov2_head import DINOv2Head, WeightNormLinear
from .dinov2_losses import DINOv2Loss, dino_loss, ibot_loss, sinkhorn_knopp
from .mae import MAEConfig, MAEObjective
from .masking import BlockMasking
from .multicrop import MultiCrop
from .schedules import cosine_schedule
from .teacher import EMATeacher, swapped_tensors

__all__ = (
    'BlockMasking',
    'DINOv2Config',
    'DINOv2Head',
    'DINOv2Loss',
    'DINOv2Objective',
    'EMATeacher',
    'MAEConfig',
    'MAEObjective',
    'MultiCrop',
    'WeightNormLinear',
    'cosine_schedule',
    'dino_loss',
    'ibot_loss',
    'sinkhorn_knopp',
    'swapped_tensors',
    'vit_tokens',
)
