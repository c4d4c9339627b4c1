"""Low-rank adapters on the query/key/value slices of a fused ``qkv`` projection.

HF peft adapts whole ``nn.Linear`` modules. A timm ViT computes Q, K and V with
one fused ``qkv`` linear layer, and ExPLoRA adapts only the Q and V slices of it
(K untouched), so peft's ``target_modules`` cannot express it exactly: LoRA on
``qkv`` in peft would also adapt K and use one rank-r factor pair for all three
projections. :class:`QKVLoRA` is the small module that does it exactly.

.. versionadded:: 0.1
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Position of each projection in a fused ``qkv`` output.
QKV_INDEX = {'q': 0, 'k': 1, 'v': 2}


class QKVLoRA(nn.Linear):
    """A fused ``qkv`` linear layer with LoRA on some of its Q, K, V slices.

    ``y = W x + b + scaling * [B_q A_q x, 0, B_v A_v x]`` for targets ``('q', 'v')``,
    with ``scaling = alpha / rank``. ``A`` is initialised like a linear layer's
    weight (kaiming-uniform, ``a = sqrt(5)``) and ``B`` with zeros, so at
    initialisation the layer computes exactly what ``base`` computes.

    The layer takes over the ``weight`` and ``bias`` tensors of ``base`` (no
    copy), so state-dict keys of the frozen weights are unchanged
    (``...qkv.weight``) and the adapter adds ``...qkv.lora_A`` / ``...qkv.lora_B``.
    The factors of all targets are stacked (``lora_A``: ``(T, r, D)``,
    ``lora_B``: ``(T, D, r)``) so that the down-projection of every target is
    one matrix product.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float = 1.0,
        targets: Sequence[str] = ('q', 'v'),
        dropout: float = 0.0,
    ) -> None:
        """Initialize a new QKVLoRA instance.

        Args:
            base: The fused ``qkv`` linear layer, ``out_features == 3 * in_features``.
            rank: LoRA rank r (>= 1).
            alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
            targets: Which of ``'q'``, ``'k'``, ``'v'`` to adapt.
            dropout: Dropout probability on the adapter's input.

        Raises:
            ValueError: If *base* is not a fused qkv layer, or *rank* or *targets*
                are invalid.
        """
        if base.out_features != 3 * base.in_features:
            raise ValueError(
                f'expected a fused qkv linear layer with out_features == 3 * '
                f'in_features, got in_features={base.in_features}, '
                f'out_features={base.out_features}'
            )
        if rank < 1:
            raise ValueError(f'LoRA rank must be >= 1, got {rank}')
        unknown = [t for t in targets if t not in QKV_INDEX]
        if unknown or not targets or len(set(targets)) != len(targets):
            raise ValueError(
                f"LoRA targets must be distinct names among 'q', 'k', 'v', got "
                f'{tuple(targets)}'
            )
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.register_parameter('bias', base.bias)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.targets = tuple(sorted(targets, key=QKV_INDEX.__getitem__))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        dim = base.in_features
        device, dtype = self.weight.device, self.weight.dtype
        self.lora_A = nn.Parameter(
            torch.empty(len(self.targets), rank, dim, device=device, dtype=dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(len(self.targets), dim, rank, device=device, dtype=dtype)
        )
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """Initialise A kaiming-uniform (a = sqrt(5)) per target and B with zeros."""
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """The dense weight update ``scaling * B A`` of every target slice.

        Returns:
            A tensor of the shape of ``weight`` (zero rows for K unless adapted).
        """
        dim = self.in_features
        delta = self.weight.new_zeros(3, dim, dim)
        update = torch.bmm(self.lora_B, self.lora_A) * self.scaling
        index = torch.tensor([QKV_INDEX[t] for t in self.targets], device=delta.device)
        delta = delta.index_copy(0, index, update.to(delta.dtype))
        return delta.reshape(3 * dim, dim)

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

    def forward(self, x: Tensor) -> Tensor:
        """Compute the fused projection plus the low-rank update of the targets.

        Args:
            x: Input of shape ``(..., in_features)``.

        Returns:
            Output of shape ``(..., 3 * in_features)``.
        """
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        num_targets, rank, dim = self.lora_A.shape
        # One product projects x down for every target: (..., T * r).
        down = F.linear(self.dropout(x), self.lora_A.reshape(num_targets * rank, dim))
        down = down.unflatten(-1, (num_targets, rank))
        # Per-target up-projection: (..., T, D).
        up = torch.einsum('...tr,tdr->...td', down, self.lora_B) * self.scaling
        parts = list(out.unflatten(-1, (3, dim)).unbind(-2))
        for i, target in enumerate(self.targets):
            parts[QKV_INDEX[target]] = parts[QKV_INDEX[target]] + up[..., i, :]
        return torch.cat(parts, dim=-1)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weights (sharing the tensors).

        Returns:
            The fused layer with the update folded in.
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

    def extra_repr(self) -> str:
        """Summary shown in the module's repr."""
        return (
            f'in_features={self.in_features}, out_features={self.out_features}, '
            f'targets={self.targets}, rank={self.rank}, alpha={self.alpha}, '
            f'merged={self.merged}'
        )
