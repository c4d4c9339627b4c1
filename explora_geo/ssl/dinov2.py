"""The DinoV2 objective as one module: augmentation, student and teacher, losses.

:class:`DINOv2Objective` takes a student ViT (the adapted encoder, owned by the
task) and adds what DinoV2 trains it with: a DINO/iBOT head trained from
scratch, the EMA teacher of both (:class:`~explora_geo.ssl.EMATeacher`, which
stores EMA copies of the trainable tensors only), the frozen mask token, the
multi-crop augmentation and the block masking. One call is one step:

1. multi-crop: 2 global + ``num_local_crops`` local crops per image
   (:meth:`DINOv2Objective.augment`, which also draws the iBOT block masks for
   a ``mask_probability`` share of the global crops);
2. teacher (no masks) → class-token and masked-patch logits → Sinkhorn-Knopp
   targets over the global batch, at the scheduled teacher temperature;
3. student (masked global crops and local crops) → DINO + iBOT + KoLeo losses.

After each optimiser step the caller moves the teacher with
:meth:`DINOv2Objective.update_teacher` at :meth:`DINOv2Objective.teacher_momentum`.
The objective's schedules (teacher temperature, teacher momentum, frozen
prototype layer) are functions of the optimiser step.

.. versionadded:: 0.1
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..models.vit import encode_tokens
from .dinov2_head import DINOv2Head
from .dinov2_losses import DINOv2Loss
from .masking import BlockMasking
from .multicrop import MultiCrop
from .schedules import cosine_schedule
from .teacher import EMATeacher

#: Local-crop side relative to the global crop in ExPLoRA (98 px for 224 px).
LOCAL_CROP_RATIO = 98 / 224


def vit_tokens(
    encoder: VisionTransformer,
    images: Tensor,
    masks: Tensor | None = None,
    mask_token: Tensor | None = None,
) -> Tensor:
    """Normalised tokens of a timm ViT, with masked patches replaced first.

    As in DinoV2, masked patch embeddings are replaced by the mask token before
    the position embedding is added. timm's ``forward_features`` has no mask
    argument (and lightly's masked-ViT wrapper renames the encoder's parameters
    under ``vit.`` and re-initialises them by default), hence this function.

    Args:
        encoder: A timm ``VisionTransformer``.
        images: ``(B, C, H, W)``.
        masks: Boolean ``(B, N)`` patch masks, or ``None``.
        mask_token: ``(1, D)`` token replacing masked patches.

    Returns:
        ``(B, prefix + N, D)`` tokens after the final norm.

    Raises:
        ValueError: If *masks* is given without *mask_token* or does not match
            the patch grid.
    """
    x = encoder.patch_embed(images)
    if masks is not None:
        if mask_token is None:
            raise ValueError('masks need a mask_token')
        grid = x.shape[1:-1]
        if masks.shape[0] != x.shape[0] or masks.shape[1] != math.prod(grid):
            raise ValueError(
                f'masks of shape {tuple(masks.shape)} do not fit {x.shape[0]} images '
                f'of {tuple(grid)} patches'
            )
        x = torch.where(
            masks.view(*x.shape[:-1], 1), mask_token.to(x.dtype).view(-1), x
        )
    return encode_tokens(encoder, encoder.patch_drop(encoder._pos_embed(x)))


@dataclass(frozen=True)
class DINOv2Config:
    """Hyperparameters of the DinoV2 objective (defaults: ExPLoRA's, after DinoV2).

    Attributes:
        head_hidden_dim: Hidden width of the DINO/iBOT head.
        head_bottleneck_dim: Bottleneck width of the head.
        num_prototypes: Prototypes K of the head.
        freeze_last_layer_steps: Optimiser steps during which the prototype
            layer's learning rate is zero.
        dino_loss_weight: Weight of the DINO loss.
        ibot_loss_weight: Weight of the iBOT loss (0 disables masking).
        koleo_loss_weight: Weight of the KoLeo regulariser.
        sinkhorn_iterations: Sinkhorn-Knopp iterations.
        student_temp: Student temperature.
        teacher_temp: Teacher temperature after the warm-up.
        warmup_teacher_temp: Teacher temperature at the first step.
        teacher_temp_warmup_steps: Steps of linear teacher-temperature warm-up.
        momentum_teacher: EMA momentum at the first step.
        final_momentum_teacher: EMA momentum at the last step (cosine).
        mask_probability: Fraction of the global crops masked for iBOT.
        mask_ratio: Range of the masked fraction of a masked crop.
        num_local_crops: Local crops per image.
        global_crop_size: Side of the global crops (default: the encoder's
            input size).
        local_crop_size: Side of the local crops (default 98/224 of the global
            size, rounded to whole patches).
        global_crops_scale: Area range of the global crops.
        local_crops_scale: Area range of the local crops.
        mean: Per-channel mean of the crop normalisation (inputs in [0, 1]).
        std: Per-channel standard deviation of the crop normalisation.

    .. versionadded:: 0.1
    """

    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    num_prototypes: int = 65536
    freeze_last_layer_steps: int = 3000
    dino_loss_weight: float = 1.0
    ibot_loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    sinkhorn_iterations: int = 3
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 30_000
    momentum_teacher: float = 0.994
    final_momentum_teacher: float = 1.0
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    num_local_crops: int = 8
    global_crop_size: int | None = None
    local_crop_size: int | None = None
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN
    std: Sequence[float] = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        """Store sequences as tuples (YAML gives lists)."""
        for name in (
            'mask_ratio',
            'global_crops_scale',
            'local_crops_scale',
            'mean',
            'std',
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))


class DINOv2Objective(nn.Module):
    """DINO + iBOT + KoLeo with an EMA teacher, for a student timm ViT.

    The student is not registered as a submodule (its owner registers it, so
    its tensors are checkpointed once); the head, the EMA teacher tensors and
    the mask token are.

    .. versionadded:: 0.1
    """

    #: The student's DINO/iBOT head.
    head: DINOv2Head
    #: EMA teacher of the student encoder (shares its frozen tensors).
    teacher_encoder: EMATeacher
    #: EMA teacher of the head.
    teacher_head: EMATeacher
    #: DinoV2's mask token (frozen) replacing masked patches of the student.
    mask_token: Tensor

    def __init__(
        self,
        encoder: VisionTransformer,
        config: DINOv2Config,
        mask_token: Tensor | None = None,
    ) -> None:
        """Initialize a new DINOv2Objective instance.

        Args:
            encoder: The student ViT (adapted; built with ``dynamic_img_size``
                so that it takes the local crops).
            config: The objective's hyperparameters.
            mask_token: DinoV2's trained mask token ``(1, D)``; zeros if ``None``.

        Raises:
            TypeError: If *encoder* is not a timm ``VisionTransformer``.
            ValueError: If the crop sizes do not fit the patch size or the
                masking grid.
        """
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(
                f'the DinoV2 objective needs a timm VisionTransformer, got a '
                f'{type(encoder).__name__}'
            )
        self.config = config
        # A tuple keeps nn.Module from registering the student as a child.
        self._student = (encoder,)
        dim = int(encoder.embed_dim)
        self.head = DINOv2Head(
            dim,
            hidden_dim=config.head_hidden_dim,
            bottleneck_dim=config.head_bottleneck_dim,
            num_prototypes=config.num_prototypes,
        )
        self.teacher_encoder = EMATeacher(encoder)
        self.teacher_head = EMATeacher(self.head)
        token = torch.zeros(1, dim) if mask_token is None else mask_token
        # Frozen (ExPLoRA trains no mask token); a buffer so it is checkpointed.
        self.register_buffer('mask_token', token.detach().reshape(1, dim).clone())

        patch = int(encoder.patch_embed.patch_size[0])
        global_size = config.global_crop_size or int(encoder.patch_embed.img_size[0])
        local_size = config.local_crop_size or max(
            patch, round(global_size * LOCAL_CROP_RATIO / patch) * patch
        )
        for name, size in (('global', global_size), ('local', local_size)):
            if size % patch:
                raise ValueError(
                    f'{name} crop size {size} is not a multiple of the patch size {patch}'
                )
        self.grid = (global_size // patch, global_size // patch)
        self.multicrop = MultiCrop(
            global_crop_size=global_size,
            local_crop_size=local_size,
            num_local_crops=config.num_local_crops,
            global_crops_scale=config.global_crops_scale,
            local_crops_scale=config.local_crops_scale,
            mean=config.mean,
            std=config.std,
        )
        self.masking: BlockMasking | None = None
        if config.ibot_loss_weight > 0:
            self.masking = BlockMasking(
                mask_probability=config.mask_probability,
                mask_ratio=config.mask_ratio,
            )
            # Fail at construction, not at the first step.
            self.masking.check_grid(self.grid)
        self.criterion = DINOv2Loss(
            student_temp=config.student_temp,
            sinkhorn_iterations=config.sinkhorn_iterations,
            dino_weight=config.dino_loss_weight,
            ibot_weight=config.ibot_loss_weight,
            koleo_weight=config.koleo_loss_weight,
        )

    @property
    def student(self) -> VisionTransformer:
        """The student encoder."""
        return self._student[0]

    # Schedules ---------------------------------------------------------------

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum after optimiser step *step* (cosine to the final value).

        Args:
            step: Optimiser step.
            total_steps: Optimiser steps of the whole run.

        Returns:
            The momentum.
        """
        c = self.config
        return cosine_schedule(
            step, total_steps, c.momentum_teacher, c.final_momentum_teacher
        )

    def teacher_temperature(self, step: int) -> float:
        """Teacher temperature at optimiser step *step* (linear warm-up, then constant)."""
        c = self.config
        warmup = c.teacher_temp_warmup_steps
        return cosine_schedule(
            step,
            warmup,
            c.teacher_temp,
            c.teacher_temp,
            warmup_steps=warmup,
            warmup_start_value=c.warmup_teacher_temp,
        )

    def last_layer_factor(self, step: int) -> float:
        """Learning-rate factor of the prototype layer: 0 while it is frozen."""
        return 0.0 if step < self.config.freeze_last_layer_steps else 1.0

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The prototype layer's trainable tensors."""
        return self.head.last_layer_parameters()

    # Step --------------------------------------------------------------------

    def augment(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Multi-crop a batch and draw the iBOT masks of its global crops.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.

        Returns:
            Global crops ``(2 B, 3, G, G)``, local crops (or ``None``) and
            boolean masks ``(2 B, N)`` (or ``None`` without iBOT).
        """
        global_crops, local_crops = self.multicrop(images)
        masks = None
        if self.masking is not None:
            masks = self.masking(global_crops.shape[0], self.grid).to(images.device)
        return global_crops, local_crops, masks

    def forward(
        self,
        global_crops: Tensor,
        local_crops: Tensor | None,
        masks: Tensor | None,
        step: int,
    ) -> dict[str, Tensor]:
        """The losses of one step on augmented views.

        Args:
            global_crops: From :meth:`augment`.
            local_crops: From :meth:`augment`.
            masks: From :meth:`augment`.
            step: Optimiser step (for the teacher temperature).

        Returns:
            ``'loss'`` and its parts (see :class:`DINOv2Loss`).
        """
        vit = self.student
        teacher_global, teacher_patch = self.teacher_targets(
            global_crops, masks, self.teacher_temperature(step)
        )
        num_global = global_crops.shape[0]
        prefix = int(vit.num_prefix_tokens)

        # Student: masked global crops and local crops, one pass of the head.
        tokens = vit_tokens(vit, global_crops, masks, self.mask_token)
        global_cls = tokens[:, 0]
        parts = [global_cls]
        num_local = 0
        if local_crops is not None:
            parts.append(vit_tokens(vit, local_crops)[:, 0])
            num_local = local_crops.shape[0]
        if masks is not None:
            parts.append(tokens[:, prefix:].flatten(0, 1)[masks.flatten()])
        logits = self.head(torch.cat(parts))
        student_global, student_local, student_patch = logits.split(
            [num_global, num_local, logits.shape[0] - num_global - num_local]
        )
        losses: dict[str, Tensor] = self.criterion(
            student_global_logits=student_global,
            teacher_global_probs=teacher_global,
            student_global_cls=global_cls,
            student_local_logits=student_local if num_local else None,
            student_patch_logits=student_patch if masks is not None else None,
            teacher_patch_probs=teacher_patch,
            masks=masks,
        )
        return losses

    @torch.no_grad()
    def teacher_targets(
        self, global_crops: Tensor, masks: Tensor | None, teacher_temp: float
    ) -> tuple[Tensor, Tensor | None]:
        """Sinkhorn-Knopp targets of the teacher for the global crops.

        The teacher sees the crops without masks; its class tokens and, for
        iBOT, its patch tokens at the student's masked positions go through
        the teacher head together, then each set is centred over the global
        batch (all ranks).

        Args:
            global_crops: ``(2 B, C, G, G)``.
            masks: Boolean ``(2 B, N)`` iBOT masks, or ``None``.
            teacher_temp: Teacher temperature.

        Returns:
            Class-token targets ``(2 B, K)`` and masked-patch targets
            ``(M, K)`` (``None`` without masks).
        """
        tokens = self.teacher_encoder.run(vit_tokens, global_crops)
        parts = [tokens[:, 0]]
        if masks is not None:
            prefix = int(self.student.num_prefix_tokens)
            parts.append(tokens[:, prefix:].flatten(0, 1)[masks.flatten()])
        logits = self.teacher_head(torch.cat(parts))
        num_global = global_crops.shape[0]
        global_targets = self.criterion.teacher_targets(
            logits[:num_global], teacher_temp
        )
        patch_targets = None
        if masks is not None:
            patch_targets = self.criterion.teacher_targets(
                logits[num_global:], teacher_temp
            )
        return global_targets, patch_targets

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA update of the teacher encoder and head.

        Args:
            momentum: EMA momentum ``m`` of ``t <- m t + (1 - m) s``.
        """
        self.teacher_encoder.update(momentum)
        self.teacher_head.update(momentum)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The encoder's and the head's trainable tensors, clipped separately (DinoV2)."""
        return [
            [p for p in module.parameters() if p.requires_grad]
            for module in (self.student, self.head)
        ]

    # Outputs -----------------------------------------------------------------

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Teacher class tokens of images in ``[0, 1]``, normalised like the crops.

        Images are resized (bicubic) to the global crop size first if needed.

        Args:
            images: ``(B, 3, H, W)``.

        Returns:
            ``(B, D)`` features.
        """
        x = images.float()
        size = self.multicrop.global_crop_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x,
                size=(size, size),
                mode='bicubic',
                antialias=True,
                align_corners=False,
            )
        x = self.multicrop.normalize(x)
        return self.teacher_encoder.run(vit_tokens, x)[:, 0]
