"""ViT backbones (registered with timm), checkpoint converters and weights."""

from . import mae as mae
from . import satmae_group as satmae_group
from . import satmae_temporal as satmae_temporal
from . import vit as vit  # registers the timm model names
from .checkpoints import convert_state_dict, load_into, read_checkpoint
from .mae import MAEOutput, MaskedAutoencoder, create_mae, register_mae
from .satmae_group import (
    SATMAE_BANDS,
    SATMAE_GROUPS,
    SENTINEL2_BANDS,
    ExPLoRAViTL8SatMAEGroupWeights,
    GroupChannelMAE,
    GroupChannelViT,
    GroupPatchEmbed,
    convert_group_state_dict,
    load_group_checkpoint,
)
from .satmae_temporal import (
    TemporalMAE,
    TemporalViT,
    convert_temporal_state_dict,
    load_temporal_checkpoint,
    time_encoding,
)
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
    'SATMAE_BANDS',
    'SATMAE_GROUPS',
    'SENTINEL2_BANDS',
    'ExPLoRAViTB14DINOv2Weights',
    'ExPLoRAViTB16MAEWeights',
    'ExPLoRAViTG14DINOv2Weights',
    'ExPLoRAViTL8SatMAEGroupWeights',
    'ExPLoRAViTL14DINOv2Weights',
    'ExPLoRAViTL16MAEWeights',
    'ExPLoRAWeightsEnum',
    'GroupChannelMAE',
    'GroupChannelViT',
    'GroupPatchEmbed',
    'MAEOutput',
    'MaskedAutoencoder',
    'TemporalMAE',
    'TemporalViT',
    'convert_group_state_dict',
    'convert_state_dict',
    'convert_temporal_state_dict',
    'create_mae',
    'create_model',
    'get_weight',
    'load_group_checkpoint',
    'load_into',
    'load_temporal_checkpoint',
    'load_weights',
    'read_checkpoint',
    'register_mae',
    'time_encoding',
)
