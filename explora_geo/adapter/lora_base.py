"""What every LoRA layer shares: taking over a linear layer, merging, exporting.

:class:`~explora_geo.adapter.lora.QKVLoRA` (slices of the fused ``qkv``
projection) and :class:`~explora_geo.adapter.linear_lora.LinearLoRA` (a whole
linear layer) differ only in the shape of their factors, how the dense update
is formed and their forward pass; both adopt the adapted layer's tensors and
fold, unfold and export the update through :class:`LoRALayer`.

.. versionadded:: 0.1
"""

import torch
from torch import Tensor, nn

__all__ = ('LoRALayer',)


class LoRALayer(nn.Linear):
    """A linear layer that holds a low-rank update ``scaling * B A`` of its weight.

    Subclasses call :meth:`adopt` in ``__init__``, then create ``lora_A`` and
    ``lora_B`` (:meth:`lora_factors`), and define :meth:`delta_weight`.

    .. versionadded:: 0.1
    """

    rank: int
    alpha: float
    scaling: float
    merged: bool
    dropout: nn.Module
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def adopt(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        """Take over *base*'s ``weight`` and ``bias`` (no copy) and set the scaling.

        Args:
            base: The linear layer to adapt.
            rank: LoRA rank r (>= 1).
            alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
            dropout: Dropout probability on the adapter's input.
        """
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.register_parameter('bias', base.bias)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def lora_factors(self, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
        """Create ``lora_A`` and ``lora_B`` beside the weight and initialise them.

        Args:
            a_shape: Shape of ``lora_A``.
            b_shape: Shape of ``lora_B``.
        """
        device, dtype = self.weight.device, self.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(a_shape, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, device=device, dtype=dtype))
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """Initialise A kaiming-uniform and B with zeros."""
        raise NotImplementedError

    def delta_weight(self) -> Tensor:
        """The dense weight update, of the shape of ``weight``."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (idempotent)."""
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update from ``weight`` again (idempotent)."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weights (sharing the tensors).

        Returns:
            The layer with the update folded in.
        """
        self.merge()
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device='meta',
        )
        linear.weight = self.weight
        linear.register_parameter('bias', self.bias)
        return linear
