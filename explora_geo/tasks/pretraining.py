"""What every ExPLoRA pre-training task shares: adapter, optimiser, guards, exports.

A pre-training task is a source network, an adapter and an objective. The
network is built in one place, :meth:`ExPLoRAPretrainingTask.configure_models`:

1. the subclass's :meth:`~ExPLoRAPretrainingTask.build_source` returns the
   source network with the weights W_S loaded (the ViT itself for DinoV2, the
   ViT with its decoder for MAE); it becomes ``self.model``;
2. the adapter (:class:`~explora_geo.adapter.ExPLoRAConfig`) is applied to its
   ViT, :attr:`~ExPLoRAPretrainingTask.encoder`;
3. the subclass's :meth:`~ExPLoRAPretrainingTask.build_objective` returns the
   objective module (:mod:`explora_geo.ssl`), which owns its augmentation,
   forward pass and loss; it becomes ``self.objective``.

Subclasses then implement ``training_step``. This base provides the rest:

* AdamW over the trainable tensors with linear warm-up then cosine decay per
  optimiser step, batch-size learning-rate scaling, a patch-embedding lr
  multiplier and gradient-norm clipping (:class:`OptimizationConfig`);
* a guard that stops training on a non-finite loss, naming the step;
* exports: the merged encoder as a checkpoint loadable by ``weights=<path>``
  (TorchGeo tasks and :func:`explora_geo.load_weights`) and the compact Δ_T
  file, both recording the :class:`~explora_geo.sensors.InputSpec` (bands and
  normalisation taken from the datamodule when it declares them).

The adapter, the optimisation and the objective are each one argument holding
a frozen dataclass, so a YAML recipe sets any of their fields
(``adapter: {rank: 32, dropout: 0.1}``) and subclasses restate no field.
Checkpoints store them as plain mappings.

.. versionadded:: 0.1
"""

import copy
import dataclasses
import math
import os
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks import BaseTask
from torchvision.models._api import WeightsEnum

from ..adapter import (
    ExPLoRAConfig,
    apply_explora,
    count_trainable_parameters,
    merge_and_unload,
)
from ..export import ExportRecord, write_export
from ..sensors import INPUT_SPEC_KEY, InputSpec, Normalization


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


@dataclass(frozen=True)
class OptimizationConfig:
    """How the trainable tensors of a pre-training task are optimised.

    Attributes:
        lr: Base learning rate for *reference_batch_size*.
        lr_scaling: Scale *lr* with the effective batch size (per-device batch
            x accumulation x devices): ``'sqrt'`` (DinoV2), ``'linear'`` (MAE,
            ``lr = blr * batch / 256``) or ``'none'``.
        reference_batch_size: Effective batch size *lr* is given for.
        min_lr: Final learning rate of the cosine schedule.
        weight_decay: AdamW weight decay.
        warmup_steps: Optimiser steps of linear warm-up.
        patch_embed_lr_mult: Learning-rate multiplier of the patch embedding.
        betas: AdamW betas.
        clip_grad: Maximum gradient norm of each network the objective names
            (DinoV2: encoder and head separately); 0 disables. Lightning's
            ``Trainer(gradient_clip_val=...)`` applies in addition if set.

    .. versionadded:: 0.1
    """

    lr: float = 1e-3
    lr_scaling: Literal['sqrt', 'linear', 'none'] = 'sqrt'
    reference_batch_size: int = 1024
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    patch_embed_lr_mult: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 0.0

    def __post_init__(self) -> None:
        """Check the fields.

        Raises:
            ValueError: If a value is out of range.
        """
        object.__setattr__(self, 'betas', tuple(self.betas))
        if self.lr_scaling not in ('sqrt', 'linear', 'none'):
            raise ValueError(
                f"lr_scaling must be 'sqrt', 'linear' or 'none', got {self.lr_scaling!r}"
            )
        if self.reference_batch_size < 1 or self.warmup_steps < 0:
            raise ValueError(
                'reference_batch_size must be >= 1 and warmup_steps >= 0, got '
                f'{self.reference_batch_size} and {self.warmup_steps}'
            )
        if len(self.betas) != 2 or self.clip_grad < 0:
            raise ValueError(
                f'betas must hold 2 values and clip_grad be >= 0, got {self.betas} '
                f'and {self.clip_grad}'
            )


def as_config[C](cls: type[C], value: C | Mapping[str, Any]) -> C:
    """A config dataclass from itself or from its mapping (as checkpoints store it).

    Args:
        cls: The dataclass.
        value: An instance, or a mapping of its fields.

    Returns:
        The instance.

    Raises:
        ValueError: If the mapping has fields *cls* does not know.
        TypeError: If *value* is neither.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f'unknown {cls.__name__} fields {unknown}; known: {sorted(known)}'
            )
        return cls(**value)
    raise TypeError(f'expected a {cls.__name__} or a mapping, got {value!r}')


def config_dict(config: Any) -> dict[str, Any]:
    """Plain data of a config dataclass (tuples as lists), for checkpoints and YAML."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(config).items()
    }


def store_configs(task: BaseTask, **configs: Any) -> None:
    """Record config dataclasses in a task's hyperparameters as plain mappings.

    Checkpoints are read with ``weights_only=True``, so they hold every field
    of each config as plain data (the config as used, with its defaults,
    whether it was given as a dataclass or as a partial mapping); the task's
    constructor turns the mapping back into the dataclass (:func:`as_config`).

    Args:
        task: A task whose ``save_hyperparameters`` has run.
        **configs: The configs by argument name.
    """
    for name in ('_hparams', '_hparams_initial'):
        hparams = cast(dict[str, Any], getattr(task, name))
        hparams.update({key: config_dict(c) for key, c in configs.items()})


class ExPLoRAPretrainingTask(BaseTask):
    """Base class of the ExPLoRA pre-training tasks.

    .. versionadded:: 0.1
    """

    ignore: Sequence[str] | str | None = ('weights',)
    monitor = 'train_loss'

    #: Value range the objective takes its images in: it crops, jitters and
    #: normalises them itself (see the data contract in docs/architecture.md).
    input_range: tuple[float, float] = (0.0, 1.0)

    #: The source network being adapted (the ViT, or the ViT with a decoder).
    model: nn.Module
    #: The self-supervised objective.
    objective: nn.Module
    #: The dataclass of the objective's hyperparameters.
    objective_config_type: ClassVar[type[Any]]

    def __init__(
        self,
        model: str,
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        img_size: int = 224,
        adapter: ExPLoRAConfig | Mapping[str, Any] = ExPLoRAConfig(),
        optimization: OptimizationConfig | Mapping[str, Any] = OptimizationConfig(),
        objective: Any = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Initialize a new ExPLoRAPretrainingTask instance.

        Args:
            model: timm name of the source ViT (e.g. ``'explora_vitl_dino'``).
            weights: Source weights W_S: an enum member, a path, ``True`` for the
                model's default, or ``None`` for random initialisation.
            in_channels: Input channels.
            img_size: Input size of the encoder (its position grid).
            adapter: What the adapter trains (or its mapping).
            optimization: Optimiser, schedule and clipping (or its mapping).
            objective: The objective's hyperparameters, an instance of
                :attr:`objective_config_type` (or its mapping); ``None`` for its
                defaults.
            model_kwargs: Extra arguments for :func:`timm.create_model`.
        """
        self.weights = weights
        self.adapter = as_config(ExPLoRAConfig, adapter)
        self.optimization = as_config(OptimizationConfig, optimization)
        config_type = self.objective_config_type
        self.objective_config = as_config(
            config_type, config_type() if objective is None else objective
        )
        self.input_spec: InputSpec | None = None
        super().__init__()
        store_configs(
            self,
            adapter=self.adapter,
            optimization=self.optimization,
            objective=self.objective_config,
        )

    # Building -----------------------------------------------------------------

    def source_kwargs(self) -> dict[str, Any]:
        """Arguments of the source network's builder: input size, channels, extras."""
        h = self.hparams
        return {
            'img_size': h['img_size'],
            'in_chans': h['in_channels'],
            **(h['model_kwargs'] or {}),
        }

    @abstractmethod
    def build_source(self) -> nn.Module:
        """The source network with W_S loaded, before the adapter.

        Returns:
            The network; its ViT is :attr:`encoder`.
        """

    @abstractmethod
    def build_objective(self) -> nn.Module:
        """The objective, built once the encoder is adapted.

        Returns:
            The objective module.
        """

    def configure_models(self) -> None:
        """Build the source network, adapt its encoder, then build the objective."""
        self.model = self.build_source()
        apply_explora(self.encoder, self.adapter)
        self.objective = self.build_objective()

    @property
    def encoder(self) -> nn.Module:
        """The adapted ViT, what gets exported (by default the whole network)."""
        return self.model

    # Training -----------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Check that the datamodule hands images in :attr:`input_range`.

        Raises:
            ValueError: Naming the datamodule and task, and the scale of each,
                if the datamodule's ``normalization`` gives another range.
        """
        datamodule = getattr(self.trainer, 'datamodule', None)
        norm = getattr(datamodule, 'normalization', None)
        if isinstance(norm, Normalization) and norm.output_range != self.input_range:
            low, high = self.input_range
            raise ValueError(
                f'{type(datamodule).__name__} hands {type(self).__name__} images '
                f'normalised {norm.describe()}, but {type(self).__name__} takes '
                f'values in [{low:g}, {high:g}] (it augments and normalises them '
                "itself): use the datamodule with unlabeled=True and its 'unit' or "
                "'satmae' scaling"
            )
        super().on_fit_start()

    def on_train_start(self) -> None:
        """Log how many values train."""
        trainable = count_trainable_parameters(self)
        self.log(
            'trainable_params', float(trainable), rank_zero_only=True, sync_dist=False
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class, the source weights and the input in checkpoints.

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
        checkpoint[INPUT_SPEC_KEY] = self.current_input_spec().to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the name of the source weights and the input spec.

        Args:
            checkpoint: The checkpoint being read.
        """
        if self.weights is None:
            self.weights = checkpoint.get('explora_source_weights')
        spec = checkpoint.get(INPUT_SPEC_KEY)
        if spec is not None:
            self.input_spec = InputSpec.from_dict(spec)

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

    # Optimisation ---------------------------------------------------------------

    def total_steps(self) -> int:
        """Optimiser steps of the whole run (1 outside a trainer)."""
        if self._trainer is None:
            return 1
        return max(1, int(self.trainer.estimated_stepping_batches))

    def effective_lr(self) -> float:
        """The base learning rate scaled to the effective batch size."""
        opt = self.optimization
        if opt.lr_scaling == 'none' or self._trainer is None:
            return float(opt.lr)
        trainer = self.trainer
        # Lightning builds optimisers before it loads the training data; load it
        # now (Lightning reuses it) so that the scaling sees the batch size.
        if trainer.train_dataloader is None and trainer.state.fn == 'fit':
            trainer.fit_loop.setup_data()
        loader = getattr(trainer, 'train_dataloader', None)
        batch_size = getattr(loader, 'batch_size', None) or 1
        effective = batch_size * trainer.accumulate_grad_batches * trainer.world_size
        ratio = effective / opt.reference_batch_size
        scale = math.sqrt(ratio) if opt.lr_scaling == 'sqrt' else ratio
        return float(opt.lr) * scale

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable tensors grouped by learning-rate multiplier."""
        base: list[nn.Parameter] = []
        patch: list[nn.Parameter] = []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (patch if 'patch_embed' in name else base).append(param)
        groups = [{'params': base, 'lr_mult': 1.0}]
        if patch:
            groups.append(
                {'params': patch, 'lr_mult': self.optimization.patch_embed_lr_mult}
            )
        return groups

    def lr_factor(self, group: Mapping[str, Any]) -> Callable[[int], float]:
        """The learning-rate factor per optimiser step of a parameter group.

        Args:
            group: A group of :meth:`parameter_groups`.

        Returns:
            ``step -> factor``: warm-up then cosine (subclasses may hold some
            groups at zero for a while).
        """
        opt = self.optimization
        total = self.total_steps()
        lr = self.effective_lr()
        min_ratio = min(1.0, opt.min_lr / lr) if lr > 0 else 0.0
        return lambda step: warmup_cosine(step, opt.warmup_steps, total, min_ratio)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW on the trainable tensors with warm-up + cosine per step.

        Returns:
            Optimizer and per-step scheduler.
        """
        opt = self.optimization
        lr = self.effective_lr()
        groups = self.parameter_groups()
        for group in groups:
            group['lr'] = lr * group['lr_mult']
        optimizer = AdamW(groups, lr=lr, weight_decay=opt.weight_decay, betas=opt.betas)
        scheduler = LambdaLR(optimizer, [self.lr_factor(g) for g in groups])
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }

    def fsdp_root(self) -> FullyShardedDataParallel | None:
        """The FSDP unit wrapping this task, if training runs under FSDP."""
        if self._trainer is None:
            return None
        model = self.trainer.strategy.model
        return model if isinstance(model, FullyShardedDataParallel) else None

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Tensors whose gradient norms are clipped together (default: all)."""
        return [[p for p in self.parameters() if p.requires_grad]]

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each of :meth:`clip_groups` to ``optimization.clip_grad``.

        Under FSDP the norm of all gradients together is clipped instead.

        Args:
            optimizer: The optimiser.
            gradient_clip_val: Lightning's ``gradient_clip_val``, applied after.
            gradient_clip_algorithm: Lightning's ``gradient_clip_algorithm``.
        """
        clip = float(self.optimization.clip_grad)
        root = self.fsdp_root()
        if clip > 0 and root is not None:
            # Sharded gradients: one norm over all of them.
            root.clip_grad_norm_(clip)
        elif clip > 0:
            for params in self.clip_groups():
                grads = [p for p in params if p.grad is not None]
                if grads:
                    nn.utils.clip_grad_norm_(grads, clip)
        super().configure_gradient_clipping(
            optimizer, gradient_clip_val, gradient_clip_algorithm
        )

    # Exports --------------------------------------------------------------------

    def input_normalization(self, data: Normalization) -> Normalization:
        """What the encoder's input is, given what the datamodule delivers.

        Args:
            data: The datamodule's normalisation.

        Returns:
            *data*; objectives that normalise again (DinoV2) compose theirs.
        """
        return data

    def current_input_spec(self) -> InputSpec:
        """The input the encoder was trained on.

        The normalisation comes from the trainer's datamodule when it declares
        one (``datamodule.normalization``), else from a loaded checkpoint.
        """
        norm = None if self.input_spec is None else self.input_spec.normalization
        datamodule = getattr(self._trainer, 'datamodule', None)
        data = getattr(datamodule, 'normalization', None)
        if isinstance(data, Normalization):
            norm = self.input_normalization(data)
        patch = getattr(getattr(self.encoder, 'patch_embed', None), 'patch_size', None)
        return InputSpec(
            normalization=norm,
            img_size=int(self.hparams['img_size']),
            patch_size=None if patch is None else int(next(iter(patch))),
        )

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
        """Write the merged encoder and Δ_T (see :func:`explora_geo.export.write_export`).

        Args:
            dirpath: Output folder.
            tag: File name prefix.

        Returns:
            Paths of the files written, by kind.
        """
        h = self.hparams
        record = ExportRecord(
            model=h['model'],
            weights=None if self.weights is None else str(self.weights),
            in_chans=h['in_channels'],
            img_size=h['img_size'],
            global_step=int(self.global_step),
            model_kwargs=h['model_kwargs'] or {},
            input_spec=self.current_input_spec(),
        )
        adapted = copy.deepcopy(self.export_source()).float().cpu()
        return write_export(adapted, Path(dirpath), tag, record)
