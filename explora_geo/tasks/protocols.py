"""Downstream training protocols: optimiser groups, per-step schedules, probe sweeps.

The paper fine-tunes with a cosine schedule after a linear warm-up of one
epoch, drop-path 0.2 and an effective batch of 256, and probes linearly as
DinoV2's evaluation does: many linear heads trained at once on shared frozen
features (a grid of learning rates times feature sets), the best one on the
validation set reported. This module holds those pieces so that the
classification, segmentation and detection tasks share them:

* :class:`ProtocolConfig` and :class:`LoRAConfig`: the ``protocol`` and
  ``lora`` arguments of the downstream tasks, each one frozen dataclass (or
  its mapping, as YAML recipes and checkpoints give it) documented here once;
* :func:`build_optimizer`: AdamW or SGD over the trainable tensors, with
  weight decay only on matrices and optional layer-wise learning-rate decay
  (timm's :func:`~timm.optim.param_groups_layer_decay`);
* :func:`build_scheduler`: TorchGeo's plateau scheduler, or linear warm-up then
  cosine decay evaluated at every optimiser step, warm-up given in epochs;
* :class:`ProbeHeads`: the DinoV2-style sweep of linear heads.

.. versionadded:: 0.1
"""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfigType
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from ..adapter import ExPLoRAConfig
from .pretraining import warmup_cosine

__all__ = (
    'LoRAConfig',
    'OptimizerName',
    'ProbeHeads',
    'ProbeSpec',
    'ProtocolConfig',
    'SchedulerName',
    'build_optimizer',
    'build_scheduler',
    'effective_batch_size',
    'probe_inputs',
    'steps_per_epoch',
    'warmup_cosine',
)

#: Optimisers of the downstream tasks.
OptimizerName = Literal['adamw', 'sgd']

#: Learning-rate schedules of the downstream tasks.
SchedulerName = Literal['plateau', 'cosine']


@dataclass(frozen=True)
class ProtocolConfig:
    """How a downstream task trains: optimiser, schedule and regularisation.

    The ``protocol`` argument of
    :class:`~explora_geo.tasks.classification.ClassificationTask`,
    :class:`~explora_geo.tasks.segmentation.SemanticSegmentationTask` and
    :class:`~explora_geo.tasks.detection.ObjectDetectionTask`, given as this
    dataclass or as a mapping of some of its fields (in a recipe,
    ``protocol: {scheduler: cosine, warmup_epochs: 1}``); the others keep
    their defaults, TorchGeo's AdamW and plateau schedule. The learning rate
    and the plateau scheduler's patience are the tasks' own ``lr`` and
    ``patience``, as in TorchGeo.

    Attributes:
        optimizer: ``'adamw'`` or ``'sgd'`` (momentum 0.9).
        weight_decay: Weight decay of the matrices (biases, norms, class
            token and position embedding are not decayed).
        scheduler: ``'plateau'`` (TorchGeo's, on the task's monitored metric)
            or ``'cosine'`` (linear warm-up, then cosine decay to *min_lr*,
            updated every optimiser step).
        warmup_epochs: Warm-up of the cosine schedule, in epochs (fractions
            allowed).
        min_lr: Final learning rate of the cosine schedule.
        layer_decay: Layer-wise learning-rate decay over the ViT's blocks
            (BEiT/MAE); decoders and heads train at ``lr``; 1: none.
        drop_path_rate: Stochastic depth rate of the ViT's blocks.
        label_smoothing: Label smoothing of the cross-entropy loss (tasks
            with ``loss='ce'``).

    .. versionadded:: 0.1
    """

    optimizer: OptimizerName = 'adamw'
    weight_decay: float = 0.01
    scheduler: SchedulerName = 'plateau'
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    layer_decay: float = 1.0
    drop_path_rate: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        """Check the fields.

        Raises:
            ValueError: Naming the field, if a value is out of range.
        """
        checks = {
            'optimizer': (self.optimizer in ('adamw', 'sgd'), "'adamw' or 'sgd'"),
            'scheduler': (
                self.scheduler in ('plateau', 'cosine'),
                "'plateau' or 'cosine'",
            ),
            'weight_decay': (self.weight_decay >= 0, '>= 0'),
            'warmup_epochs': (self.warmup_epochs >= 0, '>= 0'),
            'min_lr': (self.min_lr >= 0, '>= 0'),
            'layer_decay': (0 < self.layer_decay <= 1, 'in (0, 1]'),
            'drop_path_rate': (0 <= self.drop_path_rate < 1, 'in [0, 1)'),
            'label_smoothing': (0 <= self.label_smoothing < 1, 'in [0, 1)'),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(
                    f'{name} must be {expected}, got {getattr(self, name)!r}'
                )


@dataclass(frozen=True)
class LoRAConfig:
    """The LoRA of a downstream task's ``finetune='lora'``.

    The ``lora`` argument of the downstream tasks (this dataclass or a mapping
    of some of its fields, e.g. ``lora: {rank: 16}``): LoRA on the *targets*
    of every block of the ViT, nothing else of the ViT trains
    (:meth:`~explora_geo.adapter.ExPLoRAConfig.lora_finetune`); the task's
    head or decoder trains in full.

    Attributes:
        rank: LoRA rank.
        alpha: LoRA alpha (updates scaled by ``alpha / rank``).
        targets: Matrices with LoRA: ``'q'``, ``'k'``, ``'v'`` (slices of the
            fused ``qkv``), ``'proj'``, ``'fc1'``, ``'fc2'``.
        dropout: Dropout on the LoRA input.

    .. versionadded:: 0.1
    """

    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = ('q', 'v')
    dropout: float = 0.0

    def __post_init__(self) -> None:
        """Accept lists of targets (YAML) and check the fields.

        Raises:
            ValueError: If a value is out of range (see
                :class:`~explora_geo.adapter.ExPLoRAConfig`).
        """
        object.__setattr__(self, 'targets', tuple(self.targets))
        self.adapter()

    def adapter(self, trainable: Sequence[str] = ()) -> ExPLoRAConfig:
        """The adapter config that applies this LoRA.

        Args:
            trainable: Parameter-name patterns (``fnmatch``) of the model that
                also train, e.g. ``('head.*',)``.

        Returns:
            LoRA on every block, no block unfrozen, norms frozen.
        """
        return dataclasses.replace(
            ExPLoRAConfig.lora_finetune(rank=self.rank, alpha=self.alpha),
            targets=self.targets,
            dropout=self.dropout,
            trainable=tuple(trainable),
        )


def _prepare_data(trainer: 'lightning.Trainer') -> None:
    # Lightning builds optimisers before it loads the training data; load it
    # now (Lightning reuses it) so that batch counts are known.
    if trainer.train_dataloader is None and trainer.state.fn == 'fit':
        trainer.fit_loop.setup_data()


def steps_per_epoch(trainer: 'lightning.Trainer') -> int:
    """Optimiser steps in one epoch of *trainer*'s training data.

    Args:
        trainer: A trainer set up for fitting.

    Returns:
        ``ceil(batches per epoch / accumulate_grad_batches)``.

    Raises:
        ValueError: If the training data has no length.
    """
    _prepare_data(trainer)
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError(
            'warmup_epochs needs a training dataloader with a length; give '
            'warmup_epochs=0 for iterable data'
        )
    return max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))


def effective_batch_size(trainer: 'lightning.Trainer') -> int:
    """Samples per optimiser step: batch size x accumulation x devices.

    Args:
        trainer: A trainer set up for fitting.

    Returns:
        The effective batch size (the loader's batch size is taken as 1 when
        it has none).
    """
    _prepare_data(trainer)
    loader = getattr(trainer, 'train_dataloader', None)
    batch_size = getattr(loader, 'batch_size', None) or 1
    return int(batch_size * trainer.accumulate_grad_batches * trainer.world_size)


def build_optimizer(
    name: str,
    root: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    backbone: nn.Module | None = None,
) -> Optimizer:
    """The optimiser of a downstream task over the trainable tensors of *root*.

    Weight decay applies to matrices only: biases, norms and the backbone's
    ``no_weight_decay()`` tensors (class token, position embedding) are not
    decayed, as in MAE's and timm's fine-tuning. With ``layer_decay < 1`` the
    *backbone* gets BEiT's layer-wise decay through timm's
    :func:`~timm.optim.param_groups_layer_decay`: timm numbers the layers 0
    (embeddings), 1 to ``L`` (blocks; the final norm joins the last) and
    ``L + 1`` (the head, if the ViT has one); layer ``i`` of top layer ``n``
    trains at ``layer_decay ** (n - i)`` times *lr*. The rest of *root* (a
    segmentation decoder, probe heads) trains at *lr*.

    Args:
        name: ``'adamw'`` or ``'sgd'`` (momentum 0.9, as DinoV2's linear probe).
        root: The task (or any module) whose trainable tensors are optimised.
        lr: Learning rate (of the last layers when decaying by layer).
        weight_decay: Weight decay of the matrices.
        layer_decay: Layer-wise learning-rate decay (1: none).
        backbone: The ViT inside *root* that layer-wise decay applies to.

    Returns:
        The optimiser; each group holds its ``lr_scale`` and ``lr = lr x lr_scale``.

    Raises:
        ValueError: If *name* is unknown, *layer_decay* is not in (0, 1], or
            nothing trains.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f'layer_decay must be in (0, 1], got {layer_decay}')
    no_decay_names: set[str] = set()
    no_weight_decay = getattr(backbone, 'no_weight_decay', None)
    if callable(no_weight_decay):
        no_decay_names = set(no_weight_decay())
    groups: list[dict[str, Any]] = []
    done: set[int] = set()
    if backbone is not None and layer_decay < 1:
        for group in param_groups_layer_decay(
            backbone,
            weight_decay=weight_decay,
            no_weight_decay_list=tuple(no_decay_names),
            layer_decay=layer_decay,
        ):
            scale = float(group.pop('lr_scale'))
            groups.append({**group, 'lr': lr * scale, 'lr_scale': scale})
        done = {id(p) for p in backbone.parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param_name, param in root.named_parameters():
        if not param.requires_grad or id(param) in done:
            continue
        short = param_name.rsplit('.', 1)[-1]
        if param.ndim <= 1 or short in no_decay_names:
            no_decay.append(param)
        else:
            decay.append(param)
    for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if params:
            groups.append(
                {'params': params, 'weight_decay': wd, 'lr': lr, 'lr_scale': 1.0}
            )
    if not groups:
        raise ValueError(f'{type(root).__name__} has no trainable parameters')
    if name == 'adamw':
        return AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == 'sgd':
        return SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    trainer: 'lightning.Trainer | None',
    *,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
    patience: int = 10,
    monitor: str = 'val_loss',
    mode: str = 'min',
) -> LRSchedulerConfigType:
    """The learning-rate schedule of a downstream task, as Lightning's config.

    ``'cosine'``: a factor applied to every group's initial rate at each
    optimiser step ``s`` (:func:`~explora_geo.tasks.pretraining.warmup_cosine`):
    ``(s + 1) / W`` during the first ``W = round(warmup_epochs x steps per
    epoch)`` steps, then ``m + (1 - m) (1 + cos(pi (s - W) / (T - W))) / 2``
    with ``T`` the trainer's total optimiser steps and ``m = min_lr / lr`` of
    the group with the largest rate. ``'plateau'``: TorchGeo's default,
    :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` on *monitor*.

    Args:
        name: ``'cosine'`` or ``'plateau'``.
        optimizer: The optimiser.
        trainer: The trainer (for the number of steps; needed by ``'cosine'``).
        warmup_epochs: Epochs of linear warm-up (fractions allowed).
        min_lr: Final learning rate of the cosine schedule.
        patience: Epochs without improvement before the plateau scheduler
            lowers the rate.
        monitor: Metric the plateau scheduler watches.
        mode: ``'min'`` or ``'max'``: the direction of improvement of *monitor*.

    Returns:
        The scheduler config for ``configure_optimizers``.

    Raises:
        ValueError: If *name* is unknown, or ``'cosine'`` has no trainer.
    """
    if name == 'plateau':
        plateau_mode: Literal['min', 'max'] = 'max' if mode == 'max' else 'min'
        return {
            'scheduler': ReduceLROnPlateau(
                optimizer, mode=plateau_mode, patience=patience
            ),
            'monitor': monitor,
        }
    if name != 'cosine':
        raise ValueError(f"scheduler must be 'plateau' or 'cosine', got {name!r}")
    if trainer is None:
        raise ValueError("scheduler='cosine' needs the trainer's number of steps")
    total = max(1, int(trainer.estimated_stepping_batches))
    warmup = round(warmup_epochs * steps_per_epoch(trainer)) if warmup_epochs else 0
    peak = max(group['lr'] for group in optimizer.param_groups)
    min_ratio = min(1.0, min_lr / peak) if peak > 0 else 0.0

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup, total, min_ratio)

    return {'scheduler': LambdaLR(optimizer, factor), 'interval': 'step'}


@dataclass(frozen=True)
class ProbeSpec:
    """One linear head of a probe sweep: its features and learning rate.

    Args:
        blocks: Number of last blocks whose class tokens are concatenated.
        pooling: ``'token'`` (class tokens only), ``'token+avg'`` (plus the
            mean patch token of the last block) or ``'avg'`` (that mean alone).
        lr: Learning rate of the head (before batch-size scaling).

    .. versionadded:: 0.1
    """

    blocks: int
    pooling: str
    lr: float

    @property
    def name(self) -> str:
        """A readable key, e.g. ``'blocks4_token+avg_lr0.01'``."""
        return f'blocks{self.blocks}_{self.pooling}_lr{self.lr:g}'

    @property
    def features(self) -> tuple[int, str]:
        """The feature set the head reads."""
        return self.blocks, self.pooling

    def in_features(self, width: int) -> int:
        """Width of the head's input for a ViT of token width *width*."""
        tokens = self.blocks if 'token' in self.pooling else 0
        return width * (tokens + ('avg' in self.pooling))


def probe_inputs(
    patches: Sequence[Tensor],
    cls_tokens: Sequence[Tensor],
    blocks: int,
    pooling: str,
    part_norm: nn.Module | None = None,
) -> Tensor:
    """DinoV2's linear-probe input from normalised block outputs.

    Args:
        patches: Patch tokens ``(B, N, D)`` of the last blocks, in block order.
        cls_tokens: Class tokens ``(B, D)`` of the same blocks (may be empty
            for ``'avg'``).
        blocks: Number of last blocks whose class tokens are used.
        pooling: ``'token'``, ``'avg'`` or ``'token+avg'``.
        part_norm: A norm applied to each part before concatenation (for
            models that normalise after pooling, timm's ``fc_norm``).

    Returns:
        ``(B, F)``: the class tokens of the last *blocks* blocks, concatenated,
        then (with ``'avg'``) the mean patch token of the last block.
    """
    parts: list[Tensor] = list(cls_tokens[-blocks:]) if 'token' in pooling else []
    if 'avg' in pooling:
        parts.append(patches[-1].mean(dim=1))
    if part_norm is not None:
        parts = [part_norm(p) for p in parts]
    return torch.cat(parts, dim=-1)


class ProbeHeads(nn.Module):
    """A sweep of linear heads trained together on shared frozen features.

    One :class:`torch.nn.Linear` per :class:`ProbeSpec`, initialised as
    DinoV2's linear classifier (weights N(0, 0.01), zero bias). The loss of a
    batch is the sum of every head's loss, each head has its own learning
    rate, so the heads train independently in one pass over the data. The
    buffer ``best`` holds the index of the head chosen on validation, so a
    checkpoint restores the choice with the weights.

    .. versionadded:: 0.1
    """

    best: Tensor

    def __init__(
        self, specs: Sequence[ProbeSpec], width: int, num_outputs: int
    ) -> None:
        """Initialize a new ProbeHeads instance.

        Args:
            specs: The heads to train.
            width: Token width of the backbone.
            num_outputs: Outputs of each head.

        Raises:
            ValueError: If *specs* is empty or has duplicates.
        """
        super().__init__()
        names = [s.name for s in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f'a probe sweep needs distinct heads, got {names}')
        self.specs = tuple(specs)
        self.heads = nn.ModuleList()
        for spec in self.specs:
            head = nn.Linear(spec.in_features(width), num_outputs)
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            self.heads.append(head)
        self.register_buffer('best', torch.zeros((), dtype=torch.long))

    @property
    def max_blocks(self) -> int:
        """The most last blocks any head reads."""
        return max(s.blocks if 'token' in s.pooling else 1 for s in self.specs)

    @property
    def best_spec(self) -> ProbeSpec:
        """The head chosen on validation (the first before any validation)."""
        return self.specs[int(self.best)]

    def forward(
        self, inputs: dict[tuple[int, str], Tensor], only_best: bool = False
    ) -> list[Tensor]:
        """Logits of every head (or of the best only).

        Args:
            inputs: Features by :attr:`ProbeSpec.features`.
            only_best: Compute the chosen head only.

        Returns:
            One ``(B, num_outputs)`` tensor per head (one in all with *only_best*).
        """
        if only_best:
            i = int(self.best)
            return [self.heads[i](inputs[self.specs[i].features])]
        return [
            head(inputs[spec.features])
            for spec, head in zip(self.specs, self.heads, strict=True)
        ]

    def param_groups(self, scale: float = 1.0) -> list[dict[str, Any]]:
        """One optimiser group per head at its own learning rate.

        Args:
            scale: Factor on every rate (batch-size scaling).

        Returns:
            Groups for :class:`torch.optim.Optimizer`.
        """
        return [
            {'params': list(head.parameters()), 'lr': spec.lr * scale}
            for spec, head in zip(self.specs, self.heads, strict=True)
        ]
