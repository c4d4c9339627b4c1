"""The ExPLoRA adapter: LoRA on Q/V of a fused qkv (or whole linears), unfrozen blocks, merge and Δ_T files."""

from .explora import (
    ExPLoRAConfig,
    apply_delta,
    apply_explora,
    count_trainable_parameters,
    get_blocks,
    inject_linear_lora,
    inject_qkv_lora,
    load_delta,
    lora_layers,
    merge_and_unload,
    merge_lora,
    save_delta,
    trainable_parameters,
    unmerge_lora,
)
from .linear_lora import LinearLoRA
from .lora import QKVLoRA

__all__ = (
    'ExPLoRAConfig',
    'LinearLoRA',
    'QKVLoRA',
    'apply_delta',
    'apply_explora',
    'count_trainable_parameters',
    'get_blocks',
    'inject_linear_lora',
    'inject_qkv_lora',
    'load_delta',
    'lora_layers',
    'merge_and_unload',
    'merge_lora',
    'save_delta',
    'trainable_parameters',
    'unmerge_lora',
)
