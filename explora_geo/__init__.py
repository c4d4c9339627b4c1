"""explora_geo: ExPLoRA extended pre-training of vision transformers, for TorchGeo.

Importing the package registers its model names (``explora_vitl_dino``, ...) with
timm, so that ``timm.create_model`` and TorchGeo's tasks can build them by name.
"""

from . import adapter as adapter
from . import models as models
from .adapter import (
    ExPLoRAConfig,
    apply_delta,
    apply_explora,
    merge_and_unload,
    save_delta,
)
from .models import create_model, get_weight, load_weights

__version__ = '0.1.0'

__all__ = (
    'ExPLoRAConfig',
    'apply_delta',
    'apply_explora',
    'create_model',
    'get_weight',
    'load_weights',
    'merge_and_unload',
    'save_delta',
)
