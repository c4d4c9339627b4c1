"""ViT backbones (registered with timm), checkpoint converters and weights."""

from . import vit as vit  # registers the timm model names
from .checkpoints import convert_state_dict, load_into, read_checkpoint
from .weights import (
    ExPLoRAViTB14DINOv2Weights,
    ExPLoRAViTB16MAEWeights,
    ExPLoRAViTG14DINOv2Weights,
    ExPLoRAViTL14DINOv2Weights,
    ExPLoRAViTL16MAEWeights,
    ExPLoRAWeightsEnum,
    create_model,
    get_weight,
    load_weights,
)

__all__ = (
    'ExPLoRAViTB14DINOv2Weights',
    'ExPLoRAViTB16MAEWeights',
    'ExPLoRAViTG14DINOv2Weights',
    'ExPLoRAViTL14DINOv2Weights',
    'ExPLoRAViTL16MAEWeights',
    'ExPLoRAWeightsEnum',
    'convert_state_dict',
    'create_model',
    'get_weight',
    'load_into',
    'load_weights',
    'read_checkpoint',
)
