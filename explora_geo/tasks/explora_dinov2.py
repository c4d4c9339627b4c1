"""ExPLoRA with the DinoV2 objective (D-ExPLoRA) as a TorchGeo task.

The student is the source ViT with the ExPLoRA adapter plus a DINO/iBOT head
trained from scratch; the teacher is its exponential moving average, stored as
EMA copies of the trainable tensors only (:class:`~explora_geo.ssl.EMATeacher`),
the frozen ones being shared with the student. Every step:

1. multi-crop on the device: 2 global + ``num_local_crops`` local crops per image;
2. block masks for iBOT on half of the global crops (mask ratio in ``[0.1, 0.5]``);
3. teacher (no masks) → class-token and masked-patch logits → Sinkhorn-Knopp
   targets over the global batch, with a warming-up teacher temperature;
4. student (masked global crops and local crops) → DINO + iBOT + KoLeo losses;
5. after each optimiser step, the EMA update with a cosine momentum schedule.

The product of pre-training is the EMA *teacher* encoder:
:meth:`ExPLoRADINOv2.export` merges the teacher, and its Δ_T file holds the
teacher's trainable tensors under the student's names.

Optimisation follows DinoV2: AdamW without weight decay, learning rate scaled
by ``sqrt(effective batch / 1024)``, linear warm-up then cosine, a 0.2 learning
rate multiplier on the patch embedding, the prototype layer's learning rate at
zero for the first ``freeze_last_layer_steps`` optimiser steps, and gradient
norms clipped to ``clip_grad`` separately for the encoder and the head.
Gradient accumulation (``Trainer(accumulate_grad_batches=...)``) counts in the
effective batch; schedules advance per optimiser step.

.. versionadded:: 0.1
"""

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchvision.models._api import WeightsEnum

from ..models.checkpoints import unwrap_state_dict
from ..models.vit import encode_tokens
from ..models.weights import resolve_weights
from ..peft import count_trainable_parameters
from ..ssl.dinov2_head import DINOv2Head
from ..ssl.dinov2_losses import DINOv2Loss
from ..ssl.masking import BlockMasking
from ..ssl.multicrop import MultiCrop
from ..ssl.schedules import cosine_schedule
from ..ssl.teacher import EMATeacher
from .pretraining import ExPLoRAPretrainingTask

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


def source_mask_token(
    weights: WeightsEnum | str | os.PathLike[str] | bool | None,
    pretrained_url: str | None = None,
) -> Tensor | None:
    """DinoV2's trained mask token from the source checkpoint, if it has one.

    The encoder's converters drop ``mask_token`` (a timm ViT has none), so it
    is read here from the same source (a second read of the file).

    Args:
        weights: The task's ``weights`` argument.
        pretrained_url: The model's default URL, for ``weights=True``.

    Returns:
        The ``mask_token`` tensor, or ``None`` if there are no source weights
        or the checkpoint has none.
    """
    resolved = resolve_weights(weights, pretrained_url, whole=True)
    if resolved is None:
        return None
    return unwrap_state_dict(resolved[0]).get('mask_token')


class ExPLoRADINOv2(ExPLoRAPretrainingTask):
    """ExPLoRA extended pre-training with the DinoV2 objective.

    Expects batches ``{'image': (B, 3, H, W)}`` with values in ``[0, 1]``
    (e.g. from a TorchGeo datamodule whose normalisation divides by 255); the
    crops are normalised with *mean* / *std*.

    Distributed training: DDP (``strategy='ddp'`` or ``'ddp_spawn'``) keeps the
    student's and the EMA teacher's tensors identical on every rank and
    computes Sinkhorn-Knopp over the global batch. FSDP is supported without an
    ``auto_wrap_policy`` (the whole task is one FSDP unit, which shards the
    optimiser state and gradients); nested units inside the encoder or head are
    rejected because the teacher evaluates the student's modules with the EMA
    tensors swapped in. With ExPLoRA only ~6% of a ViT-L trains, so DDP is the
    usual choice.

    .. versionadded:: 0.1
    """

    #: The student's DINO/iBOT head.
    head: DINOv2Head
    #: EMA teacher of the encoder (shares its frozen tensors).
    teacher_encoder: EMATeacher
    #: EMA teacher of the head.
    teacher_head: EMATeacher
    #: DinoV2's mask token (frozen) replacing masked patches of the student.
    mask_token: Tensor

    def __init__(
        self,
        model: str = 'explora_vitl_dino',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        img_size: int = 224,
        unfrozen_blocks: Sequence[int] = (-1,),
        lora_rank: int = 64,
        lora_alpha: float = 1.0,
        lora_targets: Sequence[str] = ('q', 'v'),
        train_patch_embed: bool = False,
        train_pos_embed: bool = False,
        lr: float = 1e-3,
        lr_scaling: Literal['sqrt', 'linear', 'none'] = 'sqrt',
        reference_batch_size: int = 1024,
        min_lr: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 10_000,
        patch_embed_lr_mult: float = 0.2,
        model_kwargs: dict[str, Any] | None = None,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
        freeze_last_layer_steps: int = 3000,
        dino_loss_weight: float = 1.0,
        ibot_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,
        sinkhorn_iterations: int = 3,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_steps: int = 30_000,
        momentum_teacher: float = 0.994,
        final_momentum_teacher: float = 1.0,
        mask_probability: float = 0.5,
        mask_ratio: Sequence[float] = (0.1, 0.5),
        num_local_crops: int = 8,
        global_crop_size: int | None = None,
        local_crop_size: int | None = None,
        global_crops_scale: Sequence[float] = (0.32, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.32),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        clip_grad: float = 3.0,
        augmentation_seed: int | None = None,
    ) -> None:
        """Initialize a new ExPLoRADINOv2 instance.

        Args:
            model: timm name of the source DinoV2 ViT.
            weights: Source weights W_S (enum member, path, ``True`` for the
                model's default, or ``None`` for random initialisation).
            in_channels: Input channels (3: the augmentation is RGB).
            img_size: Size of the encoder's position grid (the global crop
                size unless *global_crop_size* is given).
            unfrozen_blocks: Blocks trained in full (0-based, negatives from the end).
            lora_rank: LoRA rank of the other blocks.
            lora_alpha: LoRA alpha (scaling alpha / rank).
            lora_targets: Projections of ``qkv`` with LoRA.
            train_patch_embed: Also train the patch embedding.
            train_pos_embed: Also train the position embedding.
            lr: Base learning rate for *reference_batch_size*.
            lr_scaling: Batch-size scaling of *lr* (DinoV2: ``'sqrt'``).
            reference_batch_size: Effective batch size *lr* is given for.
            min_lr: Final learning rate of the cosine schedule.
            weight_decay: AdamW weight decay.
            warmup_steps: Optimiser steps of linear learning-rate warm-up
                (DinoV2: 10 epochs of 1000 iterations).
            patch_embed_lr_mult: Learning-rate multiplier of the patch embedding.
            model_kwargs: Extra :func:`timm.create_model` arguments (e.g. small
                ``depth``/``embed_dim`` for tests, ``drop_path_rate``).
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
            global_crop_size: Side of the global crops (default *img_size*).
            local_crop_size: Side of the local crops (default 98/224 of the
                global size, rounded to whole patches).
            global_crops_scale: Area range of the global crops.
            local_crops_scale: Area range of the local crops.
            mean: Per-channel mean of the crop normalisation.
            std: Per-channel standard deviation of the crop normalisation.
            clip_grad: Maximum gradient norm of the encoder and of the head,
                each clipped separately as in DinoV2 (0 disables; Lightning's
                ``Trainer(gradient_clip_val=...)`` applies in addition if set).
            augmentation_seed: If set, the crops and masks of each micro-batch
                are drawn from a random stream seeded by (seed, rank, batch
                index), so that a resumed run sees exactly the augmentations of
                an uninterrupted one. ``None`` uses the global random state.
        """
        super().__init__(
            model=model,
            weights=weights,
            in_channels=in_channels,
            img_size=img_size,
            unfrozen_blocks=unfrozen_blocks,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            train_patch_embed=train_patch_embed,
            train_pos_embed=train_pos_embed,
            lr=lr,
            lr_scaling=lr_scaling,
            reference_batch_size=reference_batch_size,
            min_lr=min_lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            patch_embed_lr_mult=patch_embed_lr_mult,
            model_kwargs=model_kwargs,
        )

    def configure_models(self) -> None:
        """Build the adapted encoder, the head, their EMA teachers and the augmentation.

        Raises:
            ValueError: If the crop sizes do not fit the patch size or the
                masking grid.
        """
        h = self.hparams
        # Local crops are smaller than the position grid: interpolate it.
        encoder = self.build_encoder(dynamic_img_size=True)
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(
                f'ExPLoRADINOv2 needs a timm VisionTransformer, {h["model"]!r} builds '
                f'a {type(encoder).__name__}'
            )
        self.encoder = encoder
        dim = int(encoder.embed_dim)
        self.head = DINOv2Head(
            dim,
            hidden_dim=h['head_hidden_dim'],
            bottleneck_dim=h['head_bottleneck_dim'],
            num_prototypes=h['num_prototypes'],
        )
        self.teacher_encoder = EMATeacher(self.encoder)
        self.teacher_head = EMATeacher(self.head)

        pretrained_cfg: dict[str, Any] = getattr(encoder, 'pretrained_cfg', None) or {}
        token = source_mask_token(self.weights, pretrained_cfg.get('url'))
        if token is None:
            if self.weights not in (None, False):
                rank_zero_warn(
                    f'source weights {self.weights} have no mask_token; iBOT masks '
                    'use a zero token'
                )
            token = torch.zeros(1, dim)
        # Frozen (ExPLoRA trains no mask token); a buffer so it is checkpointed.
        self.register_buffer('mask_token', token.detach().reshape(1, dim).clone())

        patch = int(encoder.patch_embed.patch_size[0])
        global_size = h['global_crop_size'] or h['img_size']
        local_size = h['local_crop_size'] or max(
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
            num_local_crops=h['num_local_crops'],
            global_crops_scale=cast(
                tuple[float, float], tuple(h['global_crops_scale'])
            ),
            local_crops_scale=cast(tuple[float, float], tuple(h['local_crops_scale'])),
            mean=tuple(h['mean']),
            std=tuple(h['std']),
        )
        self.masking: BlockMasking | None = None
        if h['ibot_loss_weight'] > 0:
            self.masking = BlockMasking(
                mask_probability=h['mask_probability'],
                mask_ratio=cast(tuple[float, float], tuple(h['mask_ratio'])),
            )
            # Fail at construction, not at the first step.
            self.masking.check_grid(self.grid)

    def configure_losses(self) -> None:
        """Build the DINO + iBOT + KoLeo objective."""
        h = self.hparams
        self.criterion = DINOv2Loss(
            student_temp=h['student_temp'],
            sinkhorn_iterations=h['sinkhorn_iterations'],
            dino_weight=h['dino_loss_weight'],
            ibot_weight=h['ibot_loss_weight'],
            koleo_weight=h['koleo_loss_weight'],
        )

    @property
    def vit(self) -> VisionTransformer:
        """The adapted encoder, typed as the timm ViT it is."""
        return cast(VisionTransformer, self.encoder)

    # Schedules ---------------------------------------------------------------

    def total_steps(self) -> int:
        """Optimiser steps of the whole run (1 outside a trainer)."""
        if self._trainer is None:
            return 1
        return max(1, int(self.trainer.estimated_stepping_batches))

    def teacher_momentum(self, step: int) -> float:
        """EMA momentum after optimiser step *step* (cosine to the final value)."""
        h = self.hparams
        return cosine_schedule(
            step,
            self.total_steps(),
            h['momentum_teacher'],
            h['final_momentum_teacher'],
        )

    def teacher_temperature(self, step: int) -> float:
        """Teacher temperature at optimiser step *step* (linear warm-up, then constant)."""
        h = self.hparams
        warmup = h['teacher_temp_warmup_steps']
        return cosine_schedule(
            step,
            warmup,
            h['teacher_temp'],
            h['teacher_temp'],
            warmup_steps=warmup,
            warmup_start_value=h['warmup_teacher_temp'],
        )

    # Distributed helpers -----------------------------------------------------

    def _fsdp_root(self) -> FullyShardedDataParallel | None:
        if self._trainer is None:
            return None
        model = self.trainer.strategy.model
        return model if isinstance(model, FullyShardedDataParallel) else None

    @contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Context in which the student's parameters are whole tensors.

        A no-op except under FSDP, where the sharded parameters are gathered
        (every rank must enter it).
        """
        root = self._fsdp_root()
        context = (
            FullyShardedDataParallel.summon_full_params(root, writeback=False)
            if root is not None
            else nullcontext()
        )
        with context:
            yield

    @contextmanager
    def _augmentation_rng(self) -> Iterator[None]:
        seed = self.hparams['augmentation_seed']
        if seed is None or self._trainer is None:
            yield
            return
        index = int(self.trainer.fit_loop.total_batch_idx)
        words = np.random.SeedSequence([seed, self.global_rank, index]).generate_state(
            2
        )
        value = (int(words[0]) << 32 | int(words[1])) & (2**63 - 1)
        devices = [self.device] if self.device.type == 'cuda' else []
        python_state = random.getstate()
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(value)
            random.seed(value)
            try:
                yield
            finally:
                random.setstate(python_state)

    def on_fit_start(self) -> None:
        """Check that the distributed wrapping keeps the teacher valid.

        Raises:
            RuntimeError: If FSDP split the encoder or head into nested units.
        """
        modules = (*self.encoder.named_modules(), *self.head.named_modules())
        nested = [
            name
            for name, module in modules
            if isinstance(module, FullyShardedDataParallel)
        ]
        if nested:
            raise RuntimeError(
                'ExPLoRADINOv2 needs its encoder and head inside one FSDP unit (the '
                'EMA teacher evaluates them with swapped tensors), but found nested '
                f'FSDP units at {nested[:5]}; drop the auto_wrap_policy or use DDP'
            )
        super().on_fit_start()

    def on_train_start(self) -> None:
        """Log how many values train, in all and in the encoder (the paper's count)."""
        super().on_train_start()
        self.log(
            'trainable_params_encoder',
            float(count_trainable_parameters(self.encoder)),
            rank_zero_only=True,
        )

    # Training ----------------------------------------------------------------

    def training_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """One DinoV2 step on a batch of images.

        Args:
            batch: Mini-batch with ``'image'`` ``(B, 3, H, W)`` in ``[0, 1]``.
            batch_idx: Index of the mini-batch.
            dataloader_idx: Index of the dataloader.

        Returns:
            The training loss.
        """
        images = batch['image']
        batch_size = images.shape[0]
        with self._augmentation_rng():
            global_crops, local_crops = self.multicrop(images)
            masks = (
                self.masking(2 * batch_size, self.grid).to(self.device)
                if self.masking is not None
                else None
            )
        step = self.global_step
        teacher_global, teacher_patch = self.teacher_targets(
            global_crops, masks, self.teacher_temperature(step)
        )
        num_global = 2 * batch_size
        prefix = int(self.vit.num_prefix_tokens)

        # Student: masked global crops and local crops, one pass of the head.
        tokens = vit_tokens(self.vit, global_crops, masks, self.mask_token)
        global_cls = tokens[:, 0]
        parts = [global_cls]
        num_local = 0
        if local_crops is not None:
            parts.append(vit_tokens(self.vit, local_crops)[:, 0])
            num_local = local_crops.shape[0]
        if masks is not None:
            parts.append(tokens[:, prefix:].flatten(0, 1)[masks.flatten()])
        logits = self.head(torch.cat(parts))
        student_global, student_local, student_patch = logits.split(
            [num_global, num_local, logits.shape[0] - num_global - num_local]
        )
        losses = self.criterion(
            student_global_logits=student_global,
            teacher_global_probs=teacher_global,
            student_global_cls=global_cls,
            student_local_logits=student_local if num_local else None,
            student_patch_logits=student_patch if masks is not None else None,
            teacher_patch_probs=teacher_patch,
            masks=masks,
        )
        loss = self.check_finite(losses['loss'])
        self.log('train_loss', loss, batch_size=batch_size, prog_bar=True)
        self.log_dict(
            {
                **{f'train_{k}': v.detach() for k, v in losses.items() if k != 'loss'},
                'teacher_temp': self.teacher_temperature(step),
                'teacher_momentum': self.teacher_momentum(step),
            },
            batch_size=batch_size,
        )
        return loss

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
            prefix = int(self.vit.num_prefix_tokens)
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
    def update_teacher(self) -> None:
        """EMA update of the teacher with the momentum of the current step."""
        momentum = self.teacher_momentum(self.global_step)
        with self.full_parameters():
            self.teacher_encoder.update(momentum)
            self.teacher_head.update(momentum)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step the optimiser, then update the EMA teacher.

        Args:
            epoch: Current epoch.
            batch_idx: Index of the last mini-batch of the accumulation.
            optimizer: The optimiser.
            optimizer_closure: Lightning's closure (forward and backward).
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning counts the step as completed after this hook, so
        # global_step is still the index of the step just taken.
        self.update_teacher()

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the encoder's and the head's gradient norms separately (DinoV2).

        Under FSDP the norm of all gradients together is clipped instead.

        Args:
            optimizer: The optimiser.
            gradient_clip_val: Lightning's ``gradient_clip_val``, applied after.
            gradient_clip_algorithm: Lightning's ``gradient_clip_algorithm``.
        """
        clip = float(self.hparams['clip_grad'])
        if clip > 0:
            root = self._fsdp_root()
            if root is not None:
                root.clip_grad_norm_(clip)
            else:
                for module in (self.encoder, self.head):
                    grads = [p for p in module.parameters() if p.grad is not None]
                    if grads:
                        nn.utils.clip_grad_norm_(grads, clip)
        super().configure_gradient_clipping(
            optimizer, gradient_clip_val, gradient_clip_algorithm
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable tensors by learning-rate multiplier; the prototype layer apart."""
        last = self.head.last_layer_parameters()
        ids = {id(p) for p in last}
        groups = []
        for group in super().parameter_groups():
            group['params'] = [p for p in group['params'] if id(p) not in ids]
            if group['params']:
                groups.append(group)
        groups.append({'params': last, 'lr_mult': 1.0, 'last_layer': True})
        return groups

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW with warm-up + cosine; the prototype layer frozen at first.

        Returns:
            Optimizer and per-step scheduler.
        """
        config = cast(dict[str, Any], super().configure_optimizers())
        optimizer: Optimizer = config['optimizer']
        base = config['lr_scheduler']['scheduler'].lr_lambdas[0]
        freeze = int(self.hparams['freeze_last_layer_steps'])

        def last_layer(step: int) -> float:
            return 0.0 if step < freeze else float(base(step))

        lambdas = [
            last_layer if group.get('last_layer') else base
            for group in optimizer.param_groups
        ]
        scheduler = LambdaLR(optimizer, lambdas)
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }

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

    def export_source(self) -> nn.Module:
        """The EMA teacher encoder (a standalone copy), the product of pre-training."""
        with self.full_parameters():
            return self.teacher_encoder.materialize()
