"""Low-rank adapters on whole ``nn.Linear`` layers: attention output and MLP.

:class:`~explora_geo.adapter.lora.QKVLoRA` adapts slices of the fused ``qkv``
projection. The paper's ablation "LoRA on all matrices" also adapts the
attention output projection (``attn.proj``) and both MLP layers
(``mlp.fc1``, ``mlp.fc2``); :class:`LinearLoRA` is the adapter for such a
whole linear layer, with the same initialisation, scaling, merge semantics
and parameter names (``lora_A``, ``lora_B``) as ``QKVLoRA``.

.. versionadded:: 0.1
"""

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .lora_base import LoRALayer

__all__ = ('LINEAR_TARGETS', 'LinearLoRA')

#: Whole linear layers of a timm ViT block that can get LoRA, by target name.
LINEAR_TARGETS = {'proj': 'attn.proj', 'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2'}


class LinearLoRA(LoRALayer):
    """A linear layer with a LoRA update: ``y = W x + b + scaling * B A x``.

    ``scaling = alpha / rank``; ``A`` (``(rank, in_features)``) is initialised
    kaiming-uniform (``a = sqrt(5)``) and ``B`` (``(out_features, rank)``) with
    zeros, so at initialisation the layer computes exactly what ``base``
    computes. The layer takes over ``base``'s ``weight`` and ``bias`` tensors
    (no copy), so the frozen weights keep their state-dict keys.

    .. versionadded:: 0.1
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float = 1.0, dropout: float = 0.0
    ) -> None:
        """Initialize a new LinearLoRA instance.

        Args:
            base: The linear layer to adapt.
            rank: LoRA rank r (>= 1).
            alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
            dropout: Dropout probability on the adapter's input.

        Raises:
            ValueError: If *rank* is below 1.
        """
        if rank < 1:
            raise ValueError(f'LoRA rank must be >= 1, got {rank}')
        self.adopt(base, rank, alpha, dropout)
        self.lora_factors((rank, self.in_features), (self.out_features, rank))

    def reset_lora_parameters(self) -> None:
        """Initialise A kaiming-uniform (a = sqrt(5)) and B with zeros."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """The dense weight update ``scaling * B A``, in the weight's dtype."""
        return (self.lora_B @ self.lora_A * self.scaling).to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer and, unless merged, its low-rank update.

        Args:
            x: Input of shape ``(..., in_features)``.

        Returns:
            Output of shape ``(..., out_features)``.
        """
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return out + update * self.scaling

    def extra_repr(self) -> str:
        """Summary shown in the module's repr."""
        return (
            f'in_features={self.in_features}, out_features={self.out_features}, '
            f'rank={self.rank}, alpha={self.alpha}, merged={self.merged}'
        )
