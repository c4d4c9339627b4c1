"""DinoV2 losses: DINO (class token), iBOT (masked patches), KoLeo, Sinkhorn-Knopp.

The teacher's targets are centred with Sinkhorn-Knopp over the *global* batch:
when ``torch.distributed`` is initialised, the sums over samples and the sample
count are all-reduced, so ``R`` ranks with ``b`` samples each produce the same
targets as one process with ``R * b`` samples (as DinoV2 does).

Why these are written here rather than taken from lightly: lightly 1.6's
``DINOLoss`` and ``IBOTPatchLoss`` centre the teacher with a running mean and
compute the teacher softmax themselves, so they cannot take Sinkhorn-Knopp
targets; lightly's ``sinkhorn_knopp`` (CAPI) balances every sequence position
separately with an epsilon, which is not DinoV2's global normalisation. KoLeo
is lightly's :class:`~lightly.loss.KoLeoLoss` (DinoV2's formula), evaluated in
float32 outside autocast as DinoV2 does.

.. versionadded:: 0.1
"""

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.loss import KoLeoLoss
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: Tensor) -> Tensor:
    """Sum *tensor* over all ranks in place (a no-op without a process group)."""
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: Tensor, teacher_temp: float, iterations: int = 3
) -> Tensor:
    """Sinkhorn-Knopp centering of teacher logits over the global batch.

    With ``Q = exp(logits / T)^T`` (prototypes x samples), Q is scaled to sum 1,
    then *iterations* times each prototype row is scaled to total ``1 / K`` and
    each sample column to ``1 / B``; finally columns are scaled to sum 1. ``B``
    and the row sums are all-reduced over ranks when ``torch.distributed`` is
    initialised (every rank must call this function, also with zero samples).
    As in DinoV2 there is no max-subtraction: the head's logits are cosine
    similarities scaled by its weight-norm gain, which starts at 1.

    Args:
        teacher_logits: Teacher head outputs of this rank, ``(B_local, K)``.
        teacher_temp: Teacher temperature T.
        iterations: Number of Sinkhorn-Knopp iterations.

    Returns:
        Assignments ``(B_local, K)``, each row a distribution over prototypes.

    Raises:
        ValueError: If *teacher_logits* is not 2-D or *teacher_temp* is not positive.
    """
    if teacher_logits.ndim != 2:
        raise ValueError(
            f'teacher_logits must be (samples, prototypes), got shape '
            f'{tuple(teacher_logits.shape)}'
        )
    if teacher_temp <= 0:
        raise ValueError(f'teacher_temp must be > 0, got {teacher_temp}')
    q = torch.exp(teacher_logits.float() / teacher_temp).t()
    num_prototypes = q.shape[0]
    num_samples = _all_reduce(
        torch.tensor(float(q.shape[1]), device=q.device, dtype=q.dtype)
    )
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    q *= num_samples
    return q.t()


def dino_loss(
    student_logits: Sequence[Tensor],
    teacher_probs: Sequence[Tensor],
    student_temp: float = 0.1,
) -> Tensor:
    """DinoV2's DINO cross-entropy summed over every (student, teacher) view pair.

    ``-sum_s sum_t mean_b <t_b, log_softmax(s_b / student_temp)>``; the caller
    divides by the number of loss terms.

    Args:
        student_logits: One ``(B, K)`` tensor per student view.
        teacher_probs: One ``(B, K)`` tensor of target distributions per
            teacher view.
        student_temp: Student temperature.

    Returns:
        The summed loss (scalar).
    """
    total = torch.zeros((), device=teacher_probs[0].device)
    for s in student_logits:
        log_probs = F.log_softmax(s.float() / student_temp, dim=-1)
        for t in teacher_probs:
            total = total - torch.sum(t * log_probs, dim=-1).mean()
    return total


def ibot_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    masks: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """DinoV2's iBOT cross-entropy over masked patch tokens.

    Each masked token is weighted by ``1 / (masked tokens of its image)``, and
    the sum is divided by the number of images (masked or not), so every
    masked image contributes the mean over its masked tokens.

    Args:
        student_logits: Student logits of the masked tokens, ``(M, K)``, in the
            row-major order of ``masks.nonzero()``.
        teacher_probs: Target distributions of the same tokens, ``(M, K)``.
        masks: Boolean masks of the images, ``(S, N)`` (True = masked).
        student_temp: Student temperature.

    Returns:
        The loss (scalar).

    Raises:
        ValueError: If the number of masked tokens does not match the logits.
    """
    num_masked = int(masks.sum())
    if student_logits.shape[0] != num_masked or teacher_probs.shape[0] != num_masked:
        raise ValueError(
            f'masks select {num_masked} tokens but got {student_logits.shape[0]} '
            f'student and {teacher_probs.shape[0]} teacher rows'
        )
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    per_token = torch.sum(teacher_probs * log_probs, dim=-1)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return -(per_token * weights).sum() / masks.shape[0]


class DINOv2Loss(nn.Module):
    """The DinoV2 objective: DINO on class tokens, iBOT on masked patches, KoLeo.

    Reproduces DinoV2's weighting with 2 global and ``n`` local crops: the
    DINO terms (local crop x global teacher view, and the two cross global
    pairs) are averaged over ``2 + max(2 n, 1)`` terms; KoLeo is applied to the
    student's class tokens of each global crop separately and summed; iBOT is
    averaged over the images of both global crops.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        student_temp: float = 0.1,
        sinkhorn_iterations: int = 3,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
    ) -> None:
        """Initialize a new DINOv2Loss instance.

        Args:
            student_temp: Student temperature.
            sinkhorn_iterations: Sinkhorn-Knopp iterations of the teacher centering.
            dino_weight: Weight of the DINO loss.
            ibot_weight: Weight of the iBOT loss.
            koleo_weight: Weight of the KoLeo regulariser.

        Raises:
            ValueError: If a temperature or weight is out of range.
        """
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f'student_temp must be > 0, got {student_temp}')
        if min(dino_weight, ibot_weight, koleo_weight) < 0:
            raise ValueError(
                'loss weights must be >= 0, got '
                f'dino={dino_weight}, ibot={ibot_weight}, koleo={koleo_weight}'
            )
        self.student_temp = student_temp
        self.sinkhorn_iterations = sinkhorn_iterations
        self.dino_weight = dino_weight
        self.ibot_weight = ibot_weight
        self.koleo_weight = koleo_weight
        self.koleo = KoLeoLoss()

    def teacher_targets(self, logits: Tensor, teacher_temp: float) -> Tensor:
        """Sinkhorn-Knopp targets of teacher logits over the global batch.

        Args:
            logits: Teacher logits ``(B_local, K)``.
            teacher_temp: Teacher temperature.

        Returns:
            Target distributions ``(B_local, K)``.
        """
        return sinkhorn_knopp(logits, teacher_temp, self.sinkhorn_iterations)

    def koleo_loss(self, features: Tensor) -> Tensor:
        """KoLeo of one view's features, in float32 outside autocast."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            loss: Tensor = self.koleo(features.float())
        return loss

    def forward(
        self,
        student_global_logits: Tensor,
        teacher_global_probs: Tensor,
        student_global_cls: Tensor,
        student_local_logits: Tensor | None = None,
        student_patch_logits: Tensor | None = None,
        teacher_patch_probs: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute the weighted losses.

        Global tensors hold the two global crops one after the other (first
        crop of every image, then second crop), local ones the local crops in
        the same crop-major order.

        Args:
            student_global_logits: Student head on the global class tokens, ``(2B, K)``.
            teacher_global_probs: Teacher targets of the same crops, ``(2B, K)``.
            student_global_cls: Student class tokens (before the head) of the
                global crops, ``(2B, D)``, for KoLeo.
            student_local_logits: Student head on the local class tokens,
                ``(n B, K)``, or ``None`` without local crops.
            student_patch_logits: Student head on the masked patch tokens,
                ``(M, K)``, or ``None`` without iBOT.
            teacher_patch_probs: Teacher targets of those tokens, ``(M, K)``.
            masks: iBOT masks of the global crops, ``(2B, N)``.

        Returns:
            ``loss`` (the weighted total) and its parts ``dino_local``,
            ``dino_global``, ``koleo`` and ``ibot`` (each weighted).

        Raises:
            ValueError: If the shapes do not describe two global crops.
        """
        if student_global_logits.shape[0] % 2 or (
            student_global_logits.shape != teacher_global_probs.shape
        ):
            raise ValueError(
                'expected student and teacher global outputs of the same shape '
                '(2 B, K), got '
                f'{tuple(student_global_logits.shape)} and '
                f'{tuple(teacher_global_probs.shape)}'
            )
        batch = student_global_logits.shape[0] // 2
        t0, t1 = teacher_global_probs.split(batch)
        num_local = 0
        if student_local_logits is not None:
            num_local = student_local_logits.shape[0] // batch
        num_terms = 2 + max(2 * num_local, 1)
        zero = student_global_logits.new_zeros((), dtype=torch.float32)
        out: dict[str, Tensor] = {}
        if student_local_logits is not None and num_local > 0:
            local = dino_loss(
                student_local_logits.chunk(num_local), [t0, t1], self.student_temp
            )
            out['dino_local'] = self.dino_weight * local / num_terms
        else:
            out['dino_local'] = zero
        # Each global crop is matched with the teacher's view of the other one.
        glob = dino_loss(
            [student_global_logits], [torch.cat((t1, t0))], self.student_temp
        )
        out['dino_global'] = self.dino_weight * 2 * glob / num_terms
        if self.koleo_weight > 0:
            out['koleo'] = self.koleo_weight * sum(
                (self.koleo_loss(c) for c in student_global_cls.chunk(2)), zero
            )
        else:
            out['koleo'] = zero
        if (
            self.ibot_weight > 0
            and student_patch_logits is not None
            and teacher_patch_probs is not None
            and masks is not None
        ):
            out['ibot'] = self.ibot_weight * ibot_loss(
                student_patch_logits, teacher_patch_probs, masks, self.student_temp
            )
        else:
            out['ibot'] = zero
        out['loss'] = (
            out['dino_local'] + out['dino_global'] + out['koleo'] + out['ibot']
        )
        return out
