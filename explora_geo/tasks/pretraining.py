"""What every ExPLoRA pre-training task shares: adapter, optimiser, guards, exports.

Subclasses (the DinoV2 and MAE objectives) build their networks in
``configure_models`` by calling :meth:`ExPLoRAPretrainingTask.build_encoder`,
and implement ``training_step``. This base provides:

* the adapted encoder (source weights + :class:`~explora_geo.peft.ExPLoRAConfig`);
* AdamW over the trainable tensors with linear warm-up then cosine decay per
  optimiser step, batch-size learning-rate scaling and a patch-embedding lr
  multiplier;
* a guard that stops training on a non-finite loss, naming the step;
* exports: the merged encoder as a checkpoint loadable by ``weights=<path>``
  (TorchGeo tasks and :func:`explora_geo.load_weights`), and the compact Δ_T
  file.

.. versionadded:: 0.1
"""

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks import BaseTask
from torchvision.models._api import WeightsEnum

from ..atomic import write_atomic
from ..models.weights import create_model
from ..peft import (
    ExPLoRAConfig,
    apply_explora,
    count_trainable_parameters,
    merge_and_unload,
    save_delta,
)


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite.

    .. versionadded:: 0.1
    """


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float
) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to *min_ratio*.

    Args:
        step: Optimiser step (0-based).
        warmup_steps: Steps of linear warm-up.
        total_steps: Total optimiser steps.
        min_ratio: Final factor (``min_lr / lr``).

    Returns:
        The factor to multiply the base learning rate by.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ExPLoRAPretrainingTask(BaseTask):
    """Base class of the ExPLoRA pre-training tasks.

    .. versionadded:: 0.1
    """

    ignore: Sequence[str] | str | None = ('weights',)
    monitor = 'train_loss'

    #: The adapted encoder being pre-trained.
    encoder: nn.Module

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
        warmup_steps: int = 0,
        patch_embed_lr_mult: float = 1.0,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Initialize a new ExPLoRAPretrainingTask instance.

        Args:
            model: timm name of the source ViT (e.g. ``'explora_vitl_dino'``).
            weights: Source weights W_S: an enum member, a path, ``True`` for the
                model's default, or ``None`` for random initialisation.
            in_channels: Input channels.
            img_size: Input size of the encoder (its position grid).
            unfrozen_blocks: Blocks trained in full (0-based, negatives from the end).
            lora_rank: LoRA rank of the other blocks (0: no LoRA).
            lora_alpha: LoRA alpha (scaling alpha / rank).
            lora_targets: Projections of ``qkv`` with LoRA.
            train_patch_embed: Also train the patch embedding.
            train_pos_embed: Also train position / group encodings.
            lr: Base learning rate for *reference_batch_size*.
            lr_scaling: Scale *lr* with the effective batch size: ``'sqrt'``
                (DinoV2), ``'linear'`` (MAE) or ``'none'``.
            reference_batch_size: Effective batch size *lr* is given for.
            min_lr: Final learning rate of the cosine schedule.
            weight_decay: AdamW weight decay.
            warmup_steps: Optimiser steps of linear warm-up.
            patch_embed_lr_mult: Learning-rate multiplier of the patch embedding.
            model_kwargs: Extra arguments for :func:`timm.create_model`.
        """
        self.weights = weights
        super().__init__()

    @property
    def explora_config(self) -> ExPLoRAConfig:
        """The adapter configuration built from the hyperparameters."""
        h = self.hparams
        return ExPLoRAConfig(
            unfrozen_blocks=tuple(h['unfrozen_blocks']),
            rank=h['lora_rank'],
            alpha=h['lora_alpha'],
            targets=tuple(h['lora_targets']),
            train_patch_embed=h['train_patch_embed'],
            train_pos_embed=h['train_pos_embed'],
        )

    def build_encoder(self, **kwargs: Any) -> nn.Module:
        """Build the source ViT with W_S loaded and the adapter applied.

        Args:
            **kwargs: Extra :func:`timm.create_model` arguments (override
                ``model_kwargs``).

        Returns:
            The adapted encoder (no classifier head).
        """
        h = self.hparams
        encoder = create_model(
            h['model'],
            weights=self.weights,
            num_classes=0,
            in_chans=h['in_channels'],
            img_size=h['img_size'],
            **{**(h['model_kwargs'] or {}), **kwargs},
        )
        return apply_explora(encoder, self.explora_config)

    def on_train_start(self) -> None:
        """Log how many values train."""
        trainable = count_trainable_parameters(self)
        self.log(
            'trainable_params', float(trainable), rank_zero_only=True, sync_dist=False
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class and the source weights in Lightning checkpoints.

        ``weights`` is not a saved hyperparameter (resuming must not load it
        again), but exports name it as the source of Δ_T.

        Args:
            checkpoint: The checkpoint being written.
        """
        cls = type(self)
        checkpoint['explora_task'] = f'{cls.__module__}.{cls.__qualname__}'
        checkpoint['explora_source_weights'] = (
            None if self.weights is None else str(self.weights)
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the name of the source weights.

        Args:
            checkpoint: The checkpoint being read.
        """
        if self.weights is None:
            self.weights = checkpoint.get('explora_source_weights')

    def check_finite(self, loss: Tensor) -> Tensor:
        """Stop with a clear error when *loss* is not finite.

        Args:
            loss: The training loss of this step.

        Returns:
            *loss*.

        Raises:
            NonFiniteLossError: If *loss* is NaN or infinite.
        """
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f'non-finite training loss {loss.detach().float().item()} at global step '
                f'{self.global_step} (epoch {self.current_epoch}); lower the learning '
                'rate, enable gradient clipping, or check the input data for NaN values'
            )
        return loss

    def effective_lr(self) -> float:
        """The base learning rate scaled to the effective batch size."""
        h = self.hparams
        if h['lr_scaling'] == 'none' or self._trainer is None:
            return float(h['lr'])
        trainer = self.trainer
        # Lightning builds optimisers before it loads the training data; load it
        # now (Lightning reuses it) so that the scaling sees the batch size.
        if trainer.train_dataloader is None and trainer.state.fn == 'fit':
            trainer.fit_loop.setup_data()
        loader = getattr(trainer, 'train_dataloader', None)
        batch_size = getattr(loader, 'batch_size', None) or 1
        effective = batch_size * trainer.accumulate_grad_batches * trainer.world_size
        ratio = effective / h['reference_batch_size']
        scale = math.sqrt(ratio) if h['lr_scaling'] == 'sqrt' else ratio
        return float(h['lr']) * scale

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable tensors grouped by learning-rate multiplier."""
        mult = self.hparams['patch_embed_lr_mult']
        base: list[nn.Parameter] = []
        patch: list[nn.Parameter] = []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (patch if 'patch_embed' in name else base).append(param)
        groups = [{'params': base, 'lr_mult': 1.0}]
        if patch:
            groups.append({'params': patch, 'lr_mult': mult})
        return groups

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW on the trainable tensors with warm-up + cosine per step.

        Returns:
            Optimizer and per-step scheduler.
        """
        h = self.hparams
        lr = self.effective_lr()
        groups = self.parameter_groups()
        for group in groups:
            group['lr'] = lr * group['lr_mult']
        optimizer = AdamW(groups, lr=lr, weight_decay=h['weight_decay'])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        min_ratio = min(1.0, h['min_lr'] / lr) if lr > 0 else 0.0
        scheduler = LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, h['warmup_steps'], total, min_ratio),
        )
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }

    def export_source(self) -> nn.Module:
        """The adapted encoder whose merge is the product (DinoV2: the teacher)."""
        return self.encoder

    def merged_encoder(self) -> nn.Module:
        """A plain timm ViT holding W_S + Δ_T (a copy; training is unaffected)."""
        encoder = copy.deepcopy(self.export_source()).float().cpu()
        return merge_and_unload(encoder).eval()

    def export(
        self, dirpath: str | os.PathLike[str], tag: str = 'last'
    ) -> dict[str, Path]:
        """Write the merged encoder and Δ_T.

        ``<tag>_encoder.ckpt`` uses the layout TorchGeo reads for
        ``weights=<path>`` (``hyper_parameters.model`` and ``state_dict`` keys
        under ``model.``); ``<tag>_delta.safetensors`` holds only the trainable
        tensors plus the metadata to rebuild them on the source weights.

        Args:
            dirpath: Output folder.
            tag: File name prefix.

        Returns:
            Paths of the files written, by kind.
        """
        dirpath = Path(dirpath)
        h = self.hparams
        meta = {
            'model': h['model'],
            'weights': str(self.weights) if self.weights is not None else None,
            'in_chans': h['in_channels'],
            'img_size': h['img_size'],
            'global_step': int(self.global_step),
            'model_kwargs': h['model_kwargs'] or {},
        }
        merged = self.merged_encoder()
        checkpoint = {
            'hyper_parameters': {'model': h['model'], **meta},
            'state_dict': {f'model.{k}': v for k, v in merged.state_dict().items()},
        }
        encoder_path = write_atomic(
            dirpath / f'{tag}_encoder.ckpt', lambda tmp: torch.save(checkpoint, tmp)
        )
        source = copy.deepcopy(self.export_source()).float().cpu()
        delta_path = save_delta(
            source, dirpath / f'{tag}_delta.safetensors', metadata=meta
        )
        return {'encoder': encoder_path, 'delta': delta_path}
