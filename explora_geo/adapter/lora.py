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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lora_base import LoRALayer

#: Position of each projection in a fused ``qkv`` output.
QKV_INDEX = {'q': 0, 'k': 1, 'v': 2}


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in: autocast's if it is on, else x's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class _QKVLoRAFunction(torch.autograd.Function):
    """``W x + b`` plus ``s B_t A_t x`` added in place into each target slice.

    Written as one autograd node so that training keeps no more activation
    memory than a frozen linear layer: the forward adds the low-rank updates
    into the fused output in place (no zero-padded full-width delta, no
    per-slice copies and concatenation), and the backward recomputes the
    rank-``T r`` down-projection ``A x`` from the saved input instead of saving
    it. The only activation saved is the input (in the compute dtype; the
    dropped-out input when LoRA dropout is on), as for a plain frozen
    ``nn.Linear``; the frozen weight is saved as itself, not as an autocast
    copy. Under autocast the products run in autocast's dtype, as
    ``F.linear`` would.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        x_lora: Tensor | None,
        weight: Tensor,
        bias: Tensor | None,
        lora_a: Tensor,
        lora_b: Tensor,
        slots: tuple[int, ...],
        scaling: float,
    ) -> Tensor:
        dtype = _compute_dtype(x)
        num_targets, rank, dim = lora_a.shape
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, dim).to(dtype)
            lora_in = flat if x_lora is None else x_lora.reshape(-1, dim).to(dtype)
            out = F.linear(
                flat, weight.to(dtype), None if bias is None else bias.to(dtype)
            )
            down = lora_in @ lora_a.to(dtype).reshape(num_targets * rank, dim).T
            up = lora_b.to(dtype)
            for i, slot in enumerate(slots):
                out[:, slot * dim : (slot + 1) * dim].addmm_(
                    down[:, i * rank : (i + 1) * rank], up[i].T, alpha=scaling
                )
        ctx.dtype = dtype
        ctx.slots = slots
        ctx.scaling = scaling
        ctx.shape = shape
        ctx.has_bias = bias is not None
        ctx.separate_lora_input = x_lora is not None
        # The input of the frozen product is needed only for a trainable weight.
        keep_flat = weight.requires_grad and x_lora is not None
        ctx.save_for_backward(
            lora_in, flat if keep_flat else None, weight, lora_a, lora_b
        )
        return out.reshape(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        lora_in, flat, weight, lora_a, lora_b = ctx.saved_tensors
        if flat is None:
            flat = lora_in
        dtype, scaling = ctx.dtype, ctx.scaling
        num_targets, rank, dim = lora_a.shape
        need_x, need_x_lora, need_w, need_b, need_a, need_up = ctx.needs_input_grad[:6]
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.reshape(-1, 3 * dim).to(dtype)
            a = lora_a.to(dtype).reshape(num_targets * rank, dim)
            up = lora_b.to(dtype)
            # Gradient of the down-projection, scaled: (..., T r).
            grad_down = torch.cat(
                [
                    grad[:, slot * dim : (slot + 1) * dim] @ (up[i] * scaling)
                    for i, slot in enumerate(ctx.slots)
                ],
                dim=1,
            )
            grad_up = None
            if need_up:
                down = lora_in @ a.T  # recomputed rather than saved
                grad_up = torch.stack(
                    [
                        grad[:, slot * dim : (slot + 1) * dim].T
                        @ down[:, i * rank : (i + 1) * rank]
                        for i, slot in enumerate(ctx.slots)
                    ]
                ).mul_(scaling)
                grad_up = grad_up.to(lora_b.dtype)
            grad_a = None
            if need_a:
                grad_a = (grad_down.T @ lora_in).reshape(lora_a.shape).to(lora_a.dtype)
            grad_x = grad_x_lora = None
            if need_x:
                grad_x = grad @ weight.to(dtype)
                if not ctx.separate_lora_input:
                    grad_x.addmm_(grad_down, a)
                grad_x = grad_x.reshape(ctx.shape)
            if need_x_lora:
                grad_x_lora = (grad_down @ a).reshape(ctx.shape)
            grad_w = (grad.T @ flat).to(weight.dtype) if need_w else None
            grad_b = grad.sum(0).to(weight.dtype) if need_b and ctx.has_bias else None
        return grad_x, grad_x_lora, grad_w, grad_b, grad_a, grad_up, None, None


class QKVLoRA(LoRALayer):
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
    one matrix product. Training saves no activation but the input (see
    :class:`_QKVLoRAFunction`), less than HF peft's LoRA layer, which also
    saves its rank-r intermediate.

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
        self.adopt(base, rank, alpha, dropout)
        self.targets = tuple(sorted(targets, key=QKV_INDEX.__getitem__))
        dim, count = base.in_features, len(self.targets)
        self.lora_factors((count, rank, dim), (count, dim, rank))

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

    def forward(self, x: Tensor) -> Tensor:
        """Compute the fused projection plus the low-rank update of the targets.

        Args:
            x: Input of shape ``(..., in_features)``.

        Returns:
            Output of shape ``(..., 3 * in_features)``.
        """
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        x_lora = self.dropout(x) if isinstance(self.dropout, nn.Dropout) else None
        slots = tuple(QKV_INDEX[t] for t in self.targets)
        out: Tensor = _QKVLoRAFunction.apply(
            x,
            x_lora,
            self.weight,
            self.bias,
            self.lora_A,
            self.lora_B,
            slots,
            self.scaling,
        )
        return out

    def extra_repr(self) -> str:
        """Summary shown in the module's repr."""
        return (
            f'in_features={self.in_features}, out_features={self.out_features}, '
            f'targets={self.targets}, rank={self.rank}, alpha={self.alpha}, '
            f'merged={self.merged}'
        )
