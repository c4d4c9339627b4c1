"""Image classification with ExPLoRA ViTs: LoRA fine-tuning, linear probing, full.

:class:`ClassificationTask` is TorchGeo's
:class:`~torchgeo.tasks.Classification` (losses, metrics, steps) with the
backbone built and loaded by :func:`explora_geo.models.create_model` (every
checkpoint layout explora_geo reads, position embeddings resampled, input
channels adapted, strict key check) and the paper's fine-tuning regimes:

* ``'lora'``: LoRA of rank 8 on Q and V of every block plus the new head
  (786,432 trainable values for ViT-L, plus the head);
* ``'linear_probe'``: frozen backbone, only the head trains, on the model's
  pooled features or on DinoV2's linear-probe features (class tokens of the
  last *n* blocks, optionally with the average of the last block's patch
  tokens), as the paper probes;
* ``'full'``: everything trains.

The helpers :func:`configure_finetune` and :func:`trainable_adamw` are shared
with the segmentation and detection tasks.

.. versionadded:: 0.1
"""

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self, get_args

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchgeo.tasks import BaseTask, Classification
from torchvision.models._api import WeightsEnum

from ..models.weights import create_model
from ..peft import ExPLoRAConfig, apply_explora
from ..sensors import InputSpec, Normalization, write_input_spec

__all__ = (
    'TASK_CLASS_KEY',
    'ClassificationTask',
    'FinetuneMode',
    'configure_finetune',
    'downstream_input_spec',
    'probe_features',
    'record_task',
    'trainable_adamw',
)

#: How a pre-trained backbone is adapted downstream.
FinetuneMode = Literal['lora', 'linear_probe', 'full']

#: Features a classification head reads.
Pooling = Literal['token', 'avg', 'token+avg']


def finetune_mode(hparams: Mapping[str, Any]) -> str:
    """The effective fine-tuning mode of a downstream task.

    Args:
        hparams: The task's hyperparameters (``finetune``, ``freeze_backbone``).

    Returns:
        ``hparams['finetune']``, or ``'linear_probe'`` when the backbone is frozen.
    """
    if hparams['freeze_backbone']:
        return 'linear_probe'
    return str(hparams['finetune'])


#: Checkpoint key holding the import path of the task that wrote it (the
#: pre-training tasks use the same key).
TASK_CLASS_KEY = 'explora_task'


def _first(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[0], int):
        return int(value[0])
    return None


def _normalization(value: Any) -> Normalization | None:
    if isinstance(value, Normalization):
        return value
    if isinstance(value, Mapping):
        return Normalization.from_dict(value)
    return None


def downstream_input_spec(task: BaseTask) -> InputSpec:
    """What a downstream task's model expects: bands, normalisation, sizes, classes.

    Normalisation and class names come from the task's ``normalization`` and
    ``labels`` hyperparameters when given, else from the attached
    datamodule's ``normalization`` (a
    :class:`~explora_geo.sensors.Normalization` or its dict) and ``classes``;
    patch and input size from the model's ViT patch embedding.

    Args:
        task: A classification, segmentation or detection task.

    Returns:
        The spec (fields that cannot be known are None).
    """
    h = task.hparams
    trainer = getattr(task, '_trainer', None)
    datamodule = getattr(trainer, 'datamodule', None) if trainer is not None else None
    normalization = _normalization(h.get('normalization'))
    if normalization is None:
        normalization = _normalization(getattr(datamodule, 'normalization', None))
    classes = h.get('labels') or getattr(datamodule, 'classes', None)
    img_size = patch_size = None
    for module in task.modules():
        embed = getattr(module, 'patch_embed', None)
        if isinstance(embed, nn.Module):
            patch_size = _first(getattr(embed, 'patch_size', None))
            img_size = _first(getattr(embed, 'img_size', None))
            break
    return InputSpec(
        normalization=normalization,
        img_size=img_size,
        patch_size=patch_size,
        classes=tuple(str(c) for c in classes) if classes else None,
    )


def record_task(task: BaseTask, checkpoint: dict[str, Any]) -> None:
    """Record the task's class and :func:`downstream_input_spec` in a checkpoint.

    Args:
        task: The task being saved.
        checkpoint: Lightning's checkpoint dict (``on_save_checkpoint``).
    """
    checkpoint[TASK_CLASS_KEY] = f'{type(task).__module__}.{type(task).__qualname__}'
    write_input_spec(checkpoint, downstream_input_spec(task))


def configure_finetune(
    backbone: nn.Module,
    mode: str,
    rank: int = 8,
    alpha: float = 8.0,
    targets: Sequence[str] = ('q', 'v'),
    trainable: Sequence[str] = (),
) -> nn.Module:
    """Set which tensors of *backbone* train, in place.

    Args:
        backbone: A timm-style ViT.
        mode: ``'lora'`` (LoRA on *targets* of every block, nothing else of the
            backbone trains), ``'linear_probe'`` (all frozen) or ``'full'``.
        rank: LoRA rank.
        alpha: LoRA alpha (updates scaled by ``alpha / rank``).
        targets: Projections of the fused ``qkv`` that get LoRA.
        trainable: Parameter-name patterns (``fnmatch``) of *backbone* that
            train in every mode, e.g. ``('head.*',)`` for a head inside it.

    Returns:
        *backbone*.

    Raises:
        ValueError: If *mode* is unknown.
    """
    if mode == 'lora':
        config = dataclasses.replace(
            ExPLoRAConfig.lora_finetune(rank=rank, alpha=alpha),
            targets=tuple(targets),
            trainable=tuple(trainable),
        )
        apply_explora(backbone, config)
    elif mode == 'linear_probe':
        backbone.requires_grad_(False)
        for name, param in backbone.named_parameters():
            if any(fnmatch.fnmatchcase(name, p) for p in trainable):
                param.requires_grad_(True)
    elif mode == 'full':
        backbone.requires_grad_(True)
    else:
        raise ValueError(
            f'finetune must be one of {get_args(FinetuneMode)}, got {mode!r}'
        )
    return backbone


def trainable_adamw(task: BaseTask) -> OptimizerLRScheduler:
    """AdamW over the trainable tensors of *task*, with TorchGeo's plateau scheduler.

    Args:
        task: A task with ``lr`` and ``patience`` hyperparameters.

    Returns:
        Optimizer and scheduler, monitoring ``task.monitor`` in ``task.mode``.

    Raises:
        ValueError: If nothing in *task* trains.
    """
    params = [p for p in task.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f'{type(task).__name__} has no trainable parameters')
    optimizer = AdamW(params, lr=task.hparams['lr'])
    mode: Literal['min', 'max'] = 'max' if task.mode == 'max' else 'min'
    scheduler = ReduceLROnPlateau(
        optimizer, mode=mode, patience=task.hparams['patience']
    )
    return {
        'optimizer': optimizer,
        'lr_scheduler': {'scheduler': scheduler, 'monitor': task.monitor},
    }


def probe_features(
    vit: VisionTransformer, x: Tensor, blocks: int = 1, pooling: str = 'token'
) -> Tensor:
    """DinoV2's linear-probe features of a timm ViT.

    Every block output is passed through the final norm; the features are the
    class tokens of the last *blocks* blocks, concatenated, followed (for
    ``'token+avg'``) by the mean of the last block's patch tokens; ``'avg'``
    is that mean alone.

    Args:
        vit: A timm ``VisionTransformer``.
        x: Images ``(B, C, H, W)``.
        blocks: Number of last blocks whose class tokens are used.
        pooling: ``'token'``, ``'avg'`` or ``'token+avg'``.

    Returns:
        Features ``(B, F)``.

    Raises:
        ValueError: If *pooling* needs a class token the ViT does not have.
    """
    has_prefix = int(getattr(vit, 'num_prefix_tokens', 0)) > 0
    if 'token' in pooling and not has_prefix:
        raise ValueError(
            f'pooling {pooling!r} needs a class token; {type(vit).__name__} has none'
        )
    # With intermediates_only: a list of tokens, or of (tokens, prefix) pairs.
    outputs: list[Any] = vit.forward_intermediates(  # type: ignore[assignment]
        x,
        indices=blocks,
        norm=True,
        output_fmt='NLC',
        intermediates_only=True,
        return_prefix_tokens=has_prefix,
    )
    patches: list[Tensor] = [o[0] for o in outputs] if has_prefix else outputs
    parts: list[Tensor] = [o[1][:, 0] for o in outputs] if 'token' in pooling else []
    if 'avg' in pooling:
        parts.append(patches[-1].mean(dim=1))
    # Models that pool before normalising (timm's fc_norm, e.g. SatMAE's
    # classifiers) have an identity `norm`: normalise each pooled part instead.
    fc_norm = getattr(vit, 'fc_norm', None)
    if isinstance(fc_norm, nn.Module):
        parts = [fc_norm(p) for p in parts]
    return torch.cat(parts, dim=-1)


class ClassificationTask(Classification):
    """Image classification with an ExPLoRA (or any timm) ViT backbone.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        model: str = 'explora_vitl_dino',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        task: Literal['binary', 'multiclass', 'multilabel'] = 'multiclass',
        num_classes: int | None = None,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        pos_weight: Tensor | None = None,
        loss: Literal['ce', 'bce', 'jaccard', 'focal', 'dice'] = 'ce',
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
        freeze_backbone: bool = False,
        finetune: FinetuneMode = 'lora',
        lora_rank: int = 8,
        lora_alpha: float = 8.0,
        lora_targets: Sequence[str] = ('q', 'v'),
        pooling: Pooling | None = None,
        pooled_blocks: int = 1,
        model_kwargs: dict[str, Any] | None = None,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        """Initialize a new ClassificationTask instance.

        Args:
            model: timm name of the ViT, e.g. ``'explora_vitl_dino'``.
            weights: Backbone weights: a weights enum member or its name, a
                local checkpoint (an explora_geo ``*_encoder.ckpt`` export, a
                Lightning checkpoint, an official DinoV2/MAE/ExPLoRA release,
                a ``.safetensors`` file), ``True`` for the model's default
                weights, or ``None``/``False`` for random initialisation.
            in_channels: Number of input channels (the checkpoint's patch
                embedding is adapted when it differs).
            task: One of 'binary', 'multiclass', or 'multilabel'.
            num_classes: Number of prediction classes (only for ``task='multiclass'``).
            num_labels: Number of prediction labels (only for ``task='multilabel'``).
            labels: List of class names.
            pos_weight: A weight of positive examples and used with 'bce' loss.
            loss: One of 'ce', 'bce', 'jaccard', 'focal', or 'dice'.
            class_weights: Optional rescaling weight given to each
                class and used with 'ce' loss.
            ignore_index: Optional integer class index to ignore in the loss and
                metrics.
            lr: Learning rate of AdamW.
            patience: Patience of the learning-rate plateau scheduler.
            freeze_backbone: Same as ``finetune='linear_probe'``.
            finetune: ``'lora'``, ``'linear_probe'`` or ``'full'``.
            lora_rank: LoRA rank for ``'lora'``.
            lora_alpha: LoRA alpha for ``'lora'`` (scaling ``alpha / rank``).
            lora_targets: Projections of ``qkv`` with LoRA.
            pooling: Head input. ``None``: the model's own pooling (timm's
                ``global_pool``: the class token for DinoV2/MAE ViTs). Else
                DinoV2's linear-probe features (see :func:`probe_features`):
                class tokens (``'token'``), the mean patch token (``'avg'``)
                or both concatenated (``'token+avg'``).
            pooled_blocks: With ``'token'`` or ``'token+avg'``, concatenate
                the class tokens of this many last blocks (DinoV2 probes
                with 1 or 4).
            model_kwargs: Extra :func:`timm.create_model` arguments
                (``img_size``, ``drop_path_rate``, architecture overrides).
            normalization: How raw band values become model input
                (:meth:`~explora_geo.sensors.Normalization.to_dict`), recorded in
                checkpoints for prediction; default the datamodule's.

        Raises:
            ValueError: If *finetune*, *pooling* or *pooled_blocks* is invalid.
        """
        if finetune not in get_args(FinetuneMode):
            raise ValueError(
                f'finetune must be one of {get_args(FinetuneMode)}, got {finetune!r}'
            )
        if pooling is not None and pooling not in get_args(Pooling):
            raise ValueError(
                f'pooling must be None or one of {get_args(Pooling)}, got {pooling!r}'
            )
        if pooled_blocks < 1 or (
            pooled_blocks > 1 and pooling not in ('token', 'token+avg')
        ):
            raise ValueError(
                "pooled_blocks > 1 concatenates class tokens: it needs pooling='token' "
                f"or 'token+avg' (got pooling={pooling!r}, pooled_blocks={pooled_blocks})"
            )
        super().__init__(
            model=model,
            weights=weights,
            in_channels=in_channels,
            task=task,
            num_classes=num_classes,
            num_labels=num_labels,
            labels=labels,
            pos_weight=pos_weight,
            loss=loss,
            class_weights=class_weights,
            ignore_index=ignore_index,
            lr=lr,
            patience=patience,
            freeze_backbone=freeze_backbone,
        )

    @property
    def finetune(self) -> str:
        """The effective fine-tuning mode (``freeze_backbone`` means linear probing)."""
        return finetune_mode(self.hparams)

    @property
    def uses_timm_head(self) -> bool:
        """Whether the head reads the model's own pooled features."""
        return self.hparams['pooling'] is None

    def configure_models(self) -> None:
        """Build the ViT, load the weights and set what trains."""
        h = self.hparams
        num_outputs = h['num_classes'] or h['num_labels'] or 1
        self.model = create_model(
            h['model'],
            weights=self.weights,
            num_classes=num_outputs,
            in_chans=h['in_channels'],
            **(h['model_kwargs'] or {}),
        )
        if not self.uses_timm_head:
            width = int(self.model.embed_dim)
            tokens = h['pooled_blocks'] if 'token' in h['pooling'] else 0
            in_features = width * (tokens + ('avg' in h['pooling']))
            head = nn.Linear(in_features, num_outputs)
            # DinoV2's linear classifier initialisation.
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            self.model.head = head
        configure_finetune(
            self.model,
            self.finetune,
            rank=h['lora_rank'],
            alpha=h['lora_alpha'],
            targets=h['lora_targets'],
            trainable=('head.*',),
        )

    def features(self, x: Tensor) -> Tensor:
        """The pooled features the head reads.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            Features ``(B, F)``.
        """
        if self.uses_timm_head:
            tokens = self.model.forward_features(x)
            pooled: Tensor = self.model.forward_head(tokens, pre_logits=True)
            return pooled
        h = self.hparams
        return probe_features(self.model, x, h['pooled_blocks'], h['pooling'])

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the head.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            Logits ``(B, num_classes)``.
        """
        frozen = self.finetune == 'linear_probe'
        # A frozen backbone needs no autograd graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = self.features(x)
        logits: Tensor = self.model.get_classifier()(features)
        return logits

    def train(self, mode: bool = True) -> Self:
        """Set training mode; a linear probe's frozen backbone stays in eval mode.

        Args:
            mode: Training (``True``) or evaluation mode.

        Returns:
            The task.
        """
        super().train(mode)
        if self.finetune == 'linear_probe':
            self.model.eval()
            self.model.get_classifier().train(mode)
        return self

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW over the trainable tensors only.

        Returns:
            Optimizer and learning-rate scheduler.
        """
        return trainable_adamw(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class and what the model expects (see :func:`record_task`).

        Args:
            checkpoint: The checkpoint being written.
        """
        record_task(self, checkpoint)
