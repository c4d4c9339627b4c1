"""ExPLoRA with the DinoV2 objective (D-ExPLoRA) as a TorchGeo task.

The student is the source ViT with the ExPLoRA adapter; the objective
(:class:`~explora_geo.ssl.dinov2.DINOv2Objective`) adds the DINO/iBOT head, the
EMA teacher, multi-crop, block masking and the losses. This task feeds it
batches, steps the teacher after each optimiser step and exports the EMA
*teacher* encoder, the product of pre-training: :meth:`ExPLoRADINOv2.export`
merges the teacher, and its Δ_T file holds the teacher's trainable tensors
under the student's names.

Optimisation follows DinoV2: AdamW without weight decay, learning rate scaled
by ``sqrt(effective batch / 1024)``, linear warm-up then cosine, a 0.2 learning
rate multiplier on the patch embedding, the prototype layer's learning rate at
zero for the first ``freeze_last_layer_steps`` optimiser steps, and gradient
norms clipped to ``clip_grad`` separately for the encoder and the head.
Gradient accumulation (``Trainer(accumulate_grad_batches=...)``) counts in the
effective batch; schedules advance per optimiser step.

.. versionadded:: 0.1
"""

import os
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim import Optimizer
from torchvision.models._api import WeightsEnum

from ..adapter import ExPLoRAConfig, count_trainable_parameters
from ..models.checkpoints import unwrap_state_dict
from ..models.weights import create_model, resolve_weights
from ..sensors import Normalization
from ..ssl.dinov2 import DINOv2Config, DINOv2Objective
from .pretraining import ExPLoRAPretrainingTask, OptimizationConfig


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
    crops are normalised with the objective's *mean* / *std*.

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

    objective: DINOv2Objective
    objective_config_type = DINOv2Config
    objective_config: DINOv2Config

    def __init__(
        self,
        model: str = 'explora_vitl_dino',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        img_size: int = 224,
        adapter: ExPLoRAConfig = ExPLoRAConfig(unfrozen_blocks=(-1,), rank=64),
        optimization: OptimizationConfig = OptimizationConfig(
            lr=1e-3,
            lr_scaling='sqrt',
            reference_batch_size=1024,
            min_lr=1e-6,
            warmup_steps=10_000,
            patch_embed_lr_mult=0.2,
            clip_grad=3.0,
        ),
        objective: DINOv2Config = DINOv2Config(),
        model_kwargs: dict[str, Any] | None = None,
        augmentation_seed: int | None = None,
    ) -> None:
        """Initialize a new ExPLoRADINOv2 instance.

        Args:
            model: timm name of the source DinoV2 ViT.
            weights: Source weights W_S (enum member, path, ``True`` for the
                model's default, or ``None`` for random initialisation).
            in_channels: Input channels (3: the augmentation is RGB).
            img_size: Size of the encoder's position grid (the global crop
                size unless the objective sets ``global_crop_size``).
            adapter: What trains (default D-[L]-r64: last block unfrozen, LoRA
                r64 on Q and V of the others, norms and class token).
            optimization: AdamW and its schedule (DinoV2's: 10 epochs of 1000
                iterations of warm-up, 0.2 patch-embedding multiplier,
                gradients clipped to 3 per network).
            objective: DinoV2 hyperparameters (head, losses, teacher schedules,
                crops, masks).
            model_kwargs: Extra :func:`timm.create_model` arguments (e.g. small
                ``depth``/``embed_dim`` for tests, ``drop_path_rate``).
            augmentation_seed: If set, the crops and masks of each micro-batch
                are drawn from a random stream seeded by (seed, rank, batch
                index), so that a resumed run sees exactly the augmentations of
                an uninterrupted one. ``None`` uses the global random state.
        """
        shared = (model, weights, in_channels, img_size, adapter, optimization)
        super().__init__(*shared, objective, model_kwargs)

    def build_source(self) -> nn.Module:
        """The source ViT with W_S; it interpolates its positions for local crops.

        Returns:
            The timm ViT.

        Raises:
            TypeError: If the model is not a timm ``VisionTransformer``.
        """
        encoder = create_model(
            self.hparams['model'],
            weights=self.weights,
            num_classes=0,
            dynamic_img_size=True,
            **self.source_kwargs(),
        )
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(
                f'ExPLoRADINOv2 needs a timm VisionTransformer, '
                f'{self.hparams["model"]!r} builds a {type(encoder).__name__}'
            )
        return encoder

    def build_objective(self) -> DINOv2Objective:
        """The DinoV2 objective on the adapted encoder, with the source mask token.

        Returns:
            The objective.
        """
        pretrained_cfg: dict[str, Any] = getattr(self.vit, 'pretrained_cfg', None) or {}
        token = source_mask_token(self.weights, pretrained_cfg.get('url'))
        if token is None and self.weights not in (None, False):
            rank_zero_warn(
                f'source weights {self.weights} have no mask_token; iBOT masks '
                'use a zero token'
            )
        return DINOv2Objective(
            self.vit,
            self.objective_config,
            mask_token=token,
        )

    @property
    def vit(self) -> VisionTransformer:
        """The adapted encoder, typed as the timm ViT it is."""
        return cast(VisionTransformer, self.model)

    def teacher_momentum(self, step: int) -> float:
        """EMA momentum after optimiser step *step* of this run."""
        return self.objective.teacher_momentum(step, self.total_steps())

    # Distributed helpers -----------------------------------------------------

    @contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Context in which the student's parameters are whole tensors.

        A no-op except under FSDP, where the sharded parameters are gathered
        (every rank must enter it).
        """
        root = self.fsdp_root()
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
        modules = (*self.encoder.named_modules(), *self.objective.head.named_modules())
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
        with self._augmentation_rng():
            views = self.objective.augment(images)
        step = self.global_step
        losses = self.objective(*views, step=step)
        loss = self.check_finite(losses['loss'])
        batch_size = images.shape[0]
        self.log('train_loss', loss, batch_size=batch_size, prog_bar=True)
        self.log_dict(
            {
                **{f'train_{k}': v.detach() for k, v in losses.items() if k != 'loss'},
                'teacher_temp': self.objective.teacher_temperature(step),
                'teacher_momentum': self.teacher_momentum(step),
            },
            batch_size=batch_size,
        )
        return loss

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA update of the teacher with the momentum of the current step."""
        with self.full_parameters():
            self.objective.update_teacher(self.teacher_momentum(self.global_step))

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

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The encoder and the head, clipped separately (DinoV2)."""
        return self.objective.clip_groups()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable tensors by learning-rate multiplier; the prototype layer apart."""
        last = self.objective.last_layer_parameters()
        ids = {id(p) for p in last}
        groups = []
        for group in super().parameter_groups():
            group['params'] = [p for p in group['params'] if id(p) not in ids]
            if group['params']:
                groups.append(group)
        groups.append({'params': last, 'lr_mult': 1.0, 'last_layer': True})
        return groups

    def lr_factor(self, group: Mapping[str, Any]) -> Callable[[int], float]:
        """Warm-up + cosine; the prototype layer's held at zero while it is frozen.

        Args:
            group: A group of :meth:`parameter_groups`.

        Returns:
            ``step -> factor``.
        """
        base = super().lr_factor(group)
        if not group.get('last_layer'):
            return base
        freeze = self.objective.last_layer_factor
        return lambda step: freeze(step) * float(base(step))

    # Outputs -----------------------------------------------------------------

    def input_normalization(self, data: Normalization) -> Normalization:
        """The datamodule's ``[0, 1]`` scaling followed by the crops' mean / std.

        Args:
            data: The datamodule's normalisation.

        Returns:
            A ``'standard'`` normalisation in raw units for ``'unit'`` data,
            else *data*.
        """
        if data.kind != 'unit':
            return data
        c = self.objective_config
        return Normalization(
            'standard',
            data.bands,
            tuple(data.scale * m for m in c.mean),
            tuple(data.scale * s for s in c.std),
        )

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Teacher class tokens of images in ``[0, 1]`` (see the objective's ``embed``).

        Args:
            images: ``(B, 3, H, W)``.

        Returns:
            ``(B, D)`` features.
        """
        return self.objective.embed(images)

    def export_source(self) -> nn.Module:
        """The EMA teacher encoder (a standalone copy), the product of pre-training."""
        with self.full_parameters():
            return self.objective.teacher_encoder.materialize()
