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

The paper's protocols are options, grouped in one ``protocol`` argument
(:class:`~explora_geo.tasks.protocols.ProtocolConfig`): linear warm-up then
cosine decay per optimiser step, drop-path, layer-wise learning-rate decay,
label smoothing, SGD or AdamW; the LoRA is the ``lora`` argument
(:class:`~explora_geo.tasks.protocols.LoRAConfig`). DinoV2's linear-probe
sweep (``probe_lrs``): one head per learning rate and feature set trained in
one run, the best on validation kept. Batches may carry ``timestamps``
(fMoW temporal); they reach the model as ``timestamps=``.

The helper :func:`configure_finetune` is shared with the segmentation and
detection tasks.

.. versionadded:: 0.1
"""

import contextlib
import fnmatch
import inspect
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Self, cast, get_args

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchgeo.datasets.utils import Sample
from torchgeo.tasks import BaseTask, Classification
from torchmetrics.classification import MulticlassAccuracy
from torchvision.models._api import WeightsEnum

from ..adapter import apply_explora
from ..models.weights import create_model
from ..sensors import InputSpec, Normalization, write_input_spec
from .pretraining import as_config, store_configs
from .protocols import (
    LoRAConfig,
    ProbeHeads,
    ProbeSpec,
    ProtocolConfig,
    build_optimizer,
    build_scheduler,
    effective_batch_size,
    probe_inputs,
)

__all__ = (
    'TASK_CLASS_KEY',
    'ClassificationTask',
    'DownstreamProtocol',
    'FinetuneMode',
    'configure_finetune',
    'downstream_input_spec',
    'probe_features',
    'record_task',
)

#: How a pre-trained backbone is adapted downstream.
FinetuneMode = Literal['lora', 'linear_probe', 'full']

#: Modes of :class:`ClassificationTask`: the shared ones plus an HF peft adapter.
ClassificationFinetune = Literal['lora', 'linear_probe', 'full', 'peft']

#: Features a classification head reads.
Pooling = Literal['token', 'avg', 'token+avg']

#: Batch size the probe sweep's learning rates are given for (DinoV2 scales
#: them linearly with the effective batch size).
PROBE_REFERENCE_BATCH = 256


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


def check_finetune(finetune: str) -> None:
    """Check a fine-tuning mode of the downstream tasks.

    Args:
        finetune: The mode.

    Raises:
        ValueError: If *finetune* is not one of :data:`FinetuneMode`.
    """
    if finetune not in get_args(FinetuneMode):
        raise ValueError(
            f'finetune must be one of {get_args(FinetuneMode)}, got {finetune!r}'
        )


class DownstreamProtocol(BaseTask):
    """The fine-tuning protocol shared by the downstream tasks.

    Mixed in before a TorchGeo task (``class T(DownstreamProtocol,
    SemanticSegmentation)``): the ``lora`` and ``protocol`` arguments
    (:class:`~explora_geo.tasks.protocols.LoRAConfig`,
    :class:`~explora_geo.tasks.protocols.ProtocolConfig`), the effective
    fine-tuning mode, the optimiser and schedule of the protocol
    (:func:`~explora_geo.tasks.protocols.build_optimizer` and
    :func:`~explora_geo.tasks.protocols.build_scheduler`), its label smoothing
    and the checkpoint record of :func:`record_task`. Subclasses name the ViT
    that layer-wise decay runs over in :meth:`decay_backbone`.

    .. versionadded:: 0.1
    """

    #: The LoRA of ``finetune='lora'``.
    lora: LoRAConfig
    #: Optimiser, schedule and regularisation.
    protocol: ProtocolConfig
    #: The loss (TorchGeo's, of the tasks that have one).
    criterion: nn.Module

    def __init__(
        self,
        *,
        lora: LoRAConfig | Mapping[str, Any],
        protocol: ProtocolConfig | Mapping[str, Any],
        **kwargs: Any,
    ) -> None:
        """Read the configs, then initialise the TorchGeo task.

        Args:
            lora: The LoRA (or its mapping).
            protocol: The training protocol (or its mapping).
            **kwargs: The TorchGeo task's arguments.
        """
        self.lora = as_config(LoRAConfig, lora)
        self.protocol = as_config(ProtocolConfig, protocol)
        super().__init__(**kwargs)
        store_configs(self, lora=self.lora, protocol=self.protocol)

    def torchgeo_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """What a task's constructor passes on: the configs and TorchGeo's arguments.

        Args:
            arguments: The task constructor's arguments by name (its
                ``locals()``).

        Returns:
            ``lora``, ``protocol`` and the arguments of the TorchGeo task's
            constructor, the next in the method resolution order.
        """
        torchgeo_init = super().__init__
        names = {'lora', 'protocol', *inspect.signature(torchgeo_init).parameters}
        return {k: v for k, v in arguments.items() if k in names}

    @property
    def finetune(self) -> str:
        """The effective fine-tuning mode (``freeze_backbone`` means a frozen ViT)."""
        return finetune_mode(self.hparams)

    def create_vit(self, name: str, num_classes: int = 0) -> nn.Module:
        """Create the ViT of the hyperparameters with the task's weights.

        Built by :func:`~explora_geo.models.create_model` with ``model_kwargs``,
        the protocol's ``drop_path_rate`` and, with ``dynamic_img_size``,
        timm's dynamic input size and padding.

        Args:
            name: timm name of the ViT.
            num_classes: Outputs of its classifier (0: none).

        Returns:
            The ViT; all of it trains.
        """
        h = self.hparams
        kwargs = dict(h['model_kwargs'] or {})
        if self.protocol.drop_path_rate:
            kwargs['drop_path_rate'] = self.protocol.drop_path_rate
        if h.get('dynamic_img_size'):
            kwargs |= {'dynamic_img_size': True, 'dynamic_img_pad': True}
        return create_model(
            name,
            weights=self.weights,
            num_classes=num_classes,
            in_chans=h['in_channels'],
            **kwargs,
        )

    def build_vit(self, name: str) -> VisionTransformer:
        """Create the headless ViT (:meth:`create_vit`) and set what trains.

        Args:
            name: timm name of the ViT.

        Returns:
            The ViT, without a classifier, after :func:`configure_finetune`.
        """
        vit = configure_finetune(self.create_vit(name), self.finetune, self.lora)
        return cast(VisionTransformer, vit)

    def decay_backbone(self) -> nn.Module:
        """The ViT whose blocks layer-wise learning-rate decay runs over.

        Returns:
            The backbone module.
        """
        raise NotImplementedError

    def build_protocol_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the hyperparameters over the trainable tensors.

        Returns:
            The optimiser (layer-wise decay over :meth:`decay_backbone`).
        """
        protocol = self.protocol
        return build_optimizer(
            protocol.optimizer,
            self,
            self.hparams['lr'],
            protocol.weight_decay,
            layer_decay=protocol.layer_decay,
            backbone=self.decay_backbone(),
        )

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """The optimiser and schedule of the hyperparameters (trainable tensors only).

        Returns:
            Optimizer and learning-rate scheduler.
        """
        protocol = self.protocol
        optimizer = self.build_protocol_optimizer()
        scheduler = build_scheduler(
            protocol.scheduler,
            optimizer,
            self._trainer,
            warmup_epochs=protocol.warmup_epochs,
            min_lr=protocol.min_lr,
            patience=self.hparams['patience'],
            monitor=self.monitor,
            mode=self.mode,
        )
        return {'optimizer': optimizer, 'lr_scheduler': scheduler}

    def configure_losses(self) -> None:
        """TorchGeo's losses; cross-entropy with the protocol's label smoothing.

        Raises:
            ValueError: If label smoothing is asked of a task without a
                cross-entropy loss.
        """
        super().configure_losses()
        smoothing = self.protocol.label_smoothing
        if not smoothing:
            return
        h = self.hparams
        if h.get('loss') != 'ce':
            has = f'loss={h["loss"]!r}' if 'loss' in h else 'no loss option'
            raise ValueError(
                "label_smoothing applies to the cross-entropy loss (loss='ce'); "
                f'{type(self).__name__} has {has}'
            )
        weights = h['class_weights']
        if weights is not None and not isinstance(weights, Tensor):
            weights = torch.tensor(weights, dtype=torch.float32)
        ignore = -1000 if h['ignore_index'] is None else h['ignore_index']
        self.criterion = nn.CrossEntropyLoss(
            weight=weights, ignore_index=ignore, label_smoothing=smoothing
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class and what the model expects (see :func:`record_task`).

        Args:
            checkpoint: The checkpoint being written.
        """
        record_task(self, checkpoint)


def configure_finetune(
    backbone: nn.Module,
    mode: str,
    lora: LoRAConfig = LoRAConfig(),
    trainable: Sequence[str] = (),
) -> nn.Module:
    """Set which tensors of *backbone* train, in place.

    Args:
        backbone: A timm-style ViT.
        mode: ``'lora'`` (the LoRA of *lora* on every block, nothing else of
            the backbone trains), ``'linear_probe'`` (all frozen) or ``'full'``.
        lora: The LoRA of ``'lora'``.
        trainable: Parameter-name patterns (``fnmatch``) of *backbone* that
            train in every mode, e.g. ``('head.*',)`` for a head inside it.

    Returns:
        *backbone*.

    Raises:
        ValueError: If *mode* is unknown.
    """
    if mode == 'lora':
        apply_explora(backbone, lora.adapter(trainable))
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


def block_tokens(
    vit: VisionTransformer,
    x: Tensor,
    blocks: int = 1,
    class_token: bool = True,
    **model_inputs: Any,
) -> tuple[list[Tensor], list[Tensor]]:
    """Normalised outputs of the last *blocks* blocks of a timm ViT.

    Args:
        vit: A timm ``VisionTransformer``.
        x: Images ``(B, C, H, W)``.
        blocks: Number of last blocks.
        class_token: Also return the class tokens.
        **model_inputs: Extra inputs of the model (e.g. ``timestamps``).

    Returns:
        Patch tokens ``(B, N, D)`` and class tokens ``(B, D)`` (empty without
        *class_token*) of each block, in block order.

    Raises:
        ValueError: If *class_token* is asked of a ViT without one.
    """
    has_prefix = int(getattr(vit, 'num_prefix_tokens', 0)) > 0
    if class_token and not has_prefix:
        raise ValueError(
            f'class-token features need a class token; {type(vit).__name__} has none'
        )
    # With intermediates_only: a list of tokens, or of (tokens, prefix) pairs.
    outputs: list[Any] = vit.forward_intermediates(  # type: ignore[assignment]
        x,
        indices=blocks,
        norm=True,
        output_fmt='NLC',
        intermediates_only=True,
        return_prefix_tokens=has_prefix,
        **model_inputs,
    )
    patches: list[Tensor] = [o[0] for o in outputs] if has_prefix else outputs
    cls_tokens = [o[1][:, 0] for o in outputs] if class_token else []
    return patches, cls_tokens


def pooled_norm(vit: nn.Module) -> nn.Module | None:
    """The norm a ViT applies after pooling (timm's ``fc_norm``), if any."""
    fc_norm = getattr(vit, 'fc_norm', None)
    return fc_norm if isinstance(fc_norm, nn.Module) else None


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
    if 'token' in pooling and not int(getattr(vit, 'num_prefix_tokens', 0)):
        raise ValueError(
            f'pooling {pooling!r} needs a class token; {type(vit).__name__} has none'
        )
    patches, cls_tokens = block_tokens(vit, x, blocks, 'token' in pooling)
    return sweep_inputs(vit, patches, cls_tokens, [(blocks, pooling)])[
        (blocks, pooling)
    ]


def sweep_inputs(
    vit: nn.Module,
    patches: Sequence[Tensor],
    cls_tokens: Sequence[Tensor],
    features: Sequence[tuple[int, str]],
) -> dict[tuple[int, str], Tensor]:
    """Linear-probe inputs of several feature sets from one pass of the backbone.

    Args:
        vit: The ViT the tokens come from (for its ``fc_norm``).
        patches: Normalised patch tokens of the last blocks.
        cls_tokens: Their class tokens.
        features: ``(blocks, pooling)`` pairs.

    Returns:
        ``(B, F)`` features by pair.
    """
    # Models that pool before normalising (timm's fc_norm, e.g. SatMAE's
    # classifiers) have an identity `norm`: normalise each pooled part instead.
    norm = pooled_norm(vit)
    return {
        f: probe_inputs(patches, cls_tokens, *f, part_norm=norm)
        for f in dict.fromkeys(features)
    }


def inject_peft(
    model: nn.Module, config: Mapping[str, Any], trainable: Sequence[str] = ()
) -> nn.Module:
    """Freeze *model* and inject an HF peft adapter into it, in place.

    Args:
        model: A timm ViT.
        config: A :func:`peft.get_peft_config` mapping (``peft_type`` and the
            tuner's fields; ``target_modules`` name timm modules such as
            ``'qkv'``, ``'proj'``, ``'fc1'``, ``'fc2'``).
        trainable: Parameter-name patterns (``fnmatch``) that also train.

    Returns:
        *model* with the adapter's layers; only they and *trainable* train.

    Raises:
        ImportError: If peft is not installed.
        ValueError: If the config is AdaLoRA's.
    """
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is a test dependency
        raise ImportError(
            "finetune='peft' needs HF peft: pip install 'explora-geo[peft]'"
        ) from error
    peft_config = peft.get_peft_config(dict(config))
    if peft_config.peft_type == peft.PeftType.ADALORA:
        raise ValueError(
            "AdaLoRA reallocates ranks from inside peft's model wrapper during "
            'training (update_and_allocate, orthogonal regularisation); it is not '
            'available as a ClassificationTask peft_config'
        )
    model.requires_grad_(False)
    model = peft.inject_adapter_in_model(peft_config, model)
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in trainable):
            param.requires_grad_(True)
    return model


class ClassificationTask(DownstreamProtocol, Classification):
    """Image classification with an ExPLoRA (or any timm) ViT backbone.

    .. versionadded:: 0.1
    """

    #: The probe sweep (``probe_lrs`` given), else ``None``.
    probes: ProbeHeads | None

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
        finetune: ClassificationFinetune = 'lora',
        lora: LoRAConfig | Mapping[str, Any] = LoRAConfig(),
        protocol: ProtocolConfig | Mapping[str, Any] = ProtocolConfig(),
        pooling: Pooling | None = None,
        pooled_blocks: int = 1,
        model_kwargs: dict[str, Any] | None = None,
        normalization: dict[str, Any] | None = None,
        probe_lrs: Sequence[float] | None = None,
        probe_blocks: Sequence[int] = (1, 4),
        probe_pooling: Sequence[Pooling] = ('token', 'token+avg'),
        peft_config: dict[str, Any] | None = None,
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
            lr: Learning rate (of the last layer with layer-wise decay).
            patience: Patience of the learning-rate plateau scheduler.
            freeze_backbone: Same as ``finetune='linear_probe'``.
            finetune: ``'lora'``, ``'linear_probe'``, ``'full'`` or ``'peft'``
                (an HF peft adapter given by *peft_config*; the head trains).
            lora: The LoRA of ``'lora'``
                (:class:`~explora_geo.tasks.protocols.LoRAConfig` or its mapping).
            protocol: Optimiser, schedule, drop-path and label smoothing
                (:class:`~explora_geo.tasks.protocols.ProtocolConfig` or its
                mapping).
            pooling: Head input. ``None``: the model's own pooling (timm's
                ``global_pool``: the class token for DinoV2/MAE ViTs). Else
                DinoV2's linear-probe features (see :func:`probe_features`):
                class tokens (``'token'``), the mean patch token (``'avg'``)
                or both concatenated (``'token+avg'``).
            pooled_blocks: With ``'token'`` or ``'token+avg'``, concatenate
                the class tokens of this many last blocks (DinoV2 probes
                with 1 or 4).
            model_kwargs: Extra :func:`timm.create_model` arguments
                (``img_size``, architecture overrides).
            normalization: How raw band values become model input
                (:meth:`~explora_geo.sensors.Normalization.to_dict`), recorded in
                checkpoints for prediction; default the datamodule's.
            probe_lrs: Linear probe only: train one head per learning rate,
                per number of last blocks in *probe_blocks* and per pooling in
                *probe_pooling*, all on the same frozen features (DinoV2's
                linear evaluation). Rates are for a batch of 256 and scale
                linearly with the effective batch size. Each validation picks
                the head with the best top-1 accuracy; the task predicts
                with it and checkpoints keep the choice.
            probe_blocks: Numbers of last blocks of the sweep's feature sets.
            probe_pooling: Poolings of the sweep's feature sets.
            peft_config: With ``finetune='peft'``: a :func:`peft.get_peft_config`
                mapping, e.g. ``{'peft_type': 'BOFT', 'target_modules': ['qkv'],
                'boft_block_size': 8}`` or ``{'peft_type': 'IA3', 'target_modules':
                ['qkv', 'fc2'], 'feedforward_modules': ['fc2']}``, for the PEFT
                baselines the paper compares with (timm module names). AdaLoRA
                is refused: its rank allocation runs inside peft's own model
                wrapper and training loop.

        Raises:
            ValueError: If an argument is invalid.
        """
        if finetune not in get_args(ClassificationFinetune):
            raise ValueError(
                f'finetune must be one of {get_args(ClassificationFinetune)}, got '
                f'{finetune!r}'
            )
        if (finetune == 'peft') != (peft_config is not None):
            raise ValueError(
                "finetune='peft' and peft_config go together (got "
                f'finetune={finetune!r}, peft_config={peft_config!r})'
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
        if probe_lrs is not None:
            probing = freeze_backbone or finetune == 'linear_probe'
            if not probing or task != 'multiclass' or not probe_lrs:
                raise ValueError(
                    "probe_lrs sweeps linear heads: it needs finetune='linear_probe', "
                    f"task='multiclass' and at least one rate (got finetune={finetune!r}, "
                    f'task={task!r}, probe_lrs={probe_lrs})'
                )
            bad = [p for p in probe_pooling if p not in get_args(Pooling)]
            if bad or not probe_pooling or not probe_blocks or min(probe_blocks) < 1:
                raise ValueError(
                    f'probe_pooling must be among {get_args(Pooling)} and probe_blocks '
                    f'positive (got {tuple(probe_pooling)}, {tuple(probe_blocks)})'
                )
        super().__init__(**self.torchgeo_arguments(locals()))
        self._model_inputs: dict[str, Tensor] = {}

    @property
    def uses_timm_head(self) -> bool:
        """Whether the head reads the model's own pooled features."""
        return self.hparams['pooling'] is None and self.probes is None

    def probe_specs(self) -> list[ProbeSpec]:
        """The heads of the probe sweep (empty without ``probe_lrs``)."""
        h = self.hparams
        if h['probe_lrs'] is None:
            return []
        specs = []
        for blocks, pooling, lr in itertools.product(
            h['probe_blocks'], h['probe_pooling'], h['probe_lrs']
        ):
            # The average-pooled feature alone does not depend on the blocks.
            spec = ProbeSpec(blocks if 'token' in pooling else 1, pooling, float(lr))
            if spec not in specs:
                specs.append(spec)
        return specs

    def configure_models(self) -> None:
        """Build the ViT, load the weights and set what trains."""
        h = self.hparams
        num_outputs = h['num_classes'] or h['num_labels'] or 1
        self.model = self.create_vit(h['model'], num_outputs)
        self.probes = None
        width = int(self.model.embed_dim)
        if h['probe_lrs'] is not None:
            depth = len(getattr(self.model, 'blocks', ()))
            if max(h['probe_blocks']) > depth:
                raise ValueError(
                    f'probe_blocks {tuple(h["probe_blocks"])} asks for more blocks than '
                    f'{h["model"]} has ({depth})'
                )
            # The sweep's heads replace the model's own head.
            self.model.reset_classifier(0)
            self.probes = ProbeHeads(self.probe_specs(), width, num_outputs)
        elif h['pooling'] is not None:
            tokens = h['pooled_blocks'] if 'token' in h['pooling'] else 0
            in_features = width * (tokens + ('avg' in h['pooling']))
            head = nn.Linear(in_features, num_outputs)
            # DinoV2's linear classifier initialisation.
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            self.model.head = head
        if self.finetune == 'peft':
            self.model = inject_peft(self.model, h['peft_config'], ('head.*',))
            return
        configure_finetune(self.model, self.finetune, self.lora, ('head.*',))

    def configure_metrics(self) -> None:
        """TorchGeo's metrics, plus the top-1 accuracy of every probe head."""
        super().configure_metrics()
        h = self.hparams
        count = len(self.probes.specs) if self.probes is not None else 0
        self.probe_metrics = nn.ModuleList(
            MulticlassAccuracy(
                num_classes=h['num_classes'],
                average='micro',
                ignore_index=h['ignore_index'],
            )
            for _ in range(count)
        )

    @contextlib.contextmanager
    def model_inputs(self, batch: Mapping[str, Any]) -> Iterator[None]:
        """Pass the batch's extra model inputs (``timestamps``) to :meth:`forward`.

        TorchGeo's steps call ``self(batch['image'])``; within this context
        :meth:`forward` also gives the model the batch's ``timestamps``.

        Args:
            batch: The batch of the step.

        Yields:
            Nothing.
        """
        timestamps = batch.get('timestamps')
        self._model_inputs = {} if timestamps is None else {'timestamps': timestamps}
        try:
            yield
        finally:
            self._model_inputs = {}

    def features(self, x: Tensor, **model_inputs: Any) -> Tensor:
        """The pooled features the head reads.

        Args:
            x: Images ``(B, C, H, W)`` (``(B, T, C, H, W)`` for temporal models).
            **model_inputs: Extra model inputs (``timestamps``).

        Returns:
            Features ``(B, F)``.
        """
        if self.uses_timm_head:
            tokens = self.model.forward_features(x, **model_inputs)
            pooled: Tensor = self.model.forward_head(tokens, pre_logits=True)
            return pooled
        if self.probes is not None:
            spec = self.probes.best_spec
            return self.sweep_features(x, [spec.features], **model_inputs)[
                spec.features
            ]
        h = self.hparams
        patches, cls_tokens = block_tokens(
            self.model, x, h['pooled_blocks'], 'token' in h['pooling'], **model_inputs
        )
        key = (h['pooled_blocks'], h['pooling'])
        return sweep_inputs(self.model, patches, cls_tokens, [key])[key]

    def sweep_features(
        self, x: Tensor, features: Sequence[tuple[int, str]], **model_inputs: Any
    ) -> dict[tuple[int, str], Tensor]:
        """Several linear-probe feature sets from one pass of the backbone.

        Args:
            x: Images.
            features: ``(blocks, pooling)`` pairs.
            **model_inputs: Extra model inputs.

        Returns:
            ``(B, F)`` features by pair.
        """
        blocks = max(b if 'token' in p else 1 for b, p in features)
        class_token = any('token' in p for _, p in features)
        patches, cls_tokens = block_tokens(
            self.model, x, blocks, class_token, **model_inputs
        )
        return sweep_inputs(self.model, patches, cls_tokens, features)

    def forward(self, x: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """Logits of the head (the chosen head of a probe sweep).

        Args:
            x: Images ``(B, C, H, W)`` (``(B, T, C, H, W)`` for temporal models).
            timestamps: ``(B, T, 3)`` calendar values for temporal models;
                default: the batch's, inside :meth:`model_inputs`.

        Returns:
            Logits ``(B, num_classes)``.
        """
        inputs = dict(self._model_inputs)
        if timestamps is not None:
            inputs['timestamps'] = timestamps
        frozen = self.finetune == 'linear_probe'
        # A frozen backbone needs no autograd graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = self.features(x, **inputs)
        if self.probes is not None:
            best = int(self.probes.best)
            head: nn.Module = self.probes.heads[best]
            return head(features)
        logits: Tensor = self.model.get_classifier()(features)
        return logits

    def probe_logits(self, x: Tensor) -> list[Tensor]:
        """The logits of every head of the probe sweep (the backbone gets no gradient).

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            One ``(B, num_classes)`` tensor per head, in :attr:`probes` order.
        """
        assert self.probes is not None
        with torch.no_grad():
            inputs = self.sweep_features(x, [s.features for s in self.probes.specs])
        logits: list[Tensor] = self.probes(inputs)
        return logits

    def training_step(
        self, batch: Sample, batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Training loss (with a probe sweep: the sum of every head's loss).

        The steps run TorchGeo's with the batch's extra model inputs
        (:meth:`model_inputs`), or, with a probe sweep, every head at once.

        Args:
            batch: The output of the DataLoader.
            batch_idx: Index of this batch.
            dataloader_idx: Index of the current dataloader.

        Returns:
            The loss tensor.
        """
        if self.probes is not None:
            x, y = batch['image'], batch['label']
            logits = self.probe_logits(x)
            loss = torch.stack([self.criterion(out, y) for out in logits]).sum()
            self.train_metrics(logits[int(self.probes.best)], y)
            self.log('train_loss', loss, batch_size=x.shape[0])
            return loss
        with self.model_inputs(batch):
            return super().training_step(batch, batch_idx, dataloader_idx)

    def validation_step(
        self, batch: Sample, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Validation loss and metrics (of every probe head); see :meth:`training_step`."""
        if self.probes is None:
            with self.model_inputs(batch):
                super().validation_step(batch, batch_idx, dataloader_idx)
            return
        x, y = batch['image'], batch['label']
        logits = self.probe_logits(x)
        metrics: list[MulticlassAccuracy] = list(self.probe_metrics)  # type: ignore[arg-type]
        for metric, out in zip(metrics, logits, strict=True):
            metric.update(out, y)
        y_hat = logits[int(self.probes.best)]
        self.val_metrics(y_hat, y)
        self.log('val_loss', self.criterion(y_hat, y), batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics; choose and report the best probe head."""
        super().on_validation_epoch_end()
        if self.probes is None:
            return
        metrics: list[MulticlassAccuracy] = list(self.probe_metrics)  # type: ignore[arg-type]
        accuracies = torch.stack([m.compute() for m in metrics])
        for metric in metrics:
            metric.reset()
        if self._trainer is not None and self.trainer.sanity_checking:
            return
        best = int(accuracies.argmax())
        self.probes.best.fill_(best)
        for spec, accuracy in zip(self.probes.specs, accuracies, strict=True):
            self.log(f'val_probe/{spec.name}', accuracy)
        self.log('val_probe_best_accuracy', accuracies[best])
        self.log('val_probe_best', float(best))
        rank_zero_info(
            f'best linear probe: {self.probes.specs[best].name} '
            f'(val top-1 {float(accuracies[best]):.4f})'
        )

    def test_step(self, batch: Sample, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Test loss and metrics; see :meth:`training_step`."""
        with self.model_inputs(batch):
            super().test_step(batch, batch_idx, dataloader_idx)

    def predict_step(
        self, batch: Sample, batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Class probabilities; see :meth:`training_step`."""
        with self.model_inputs(batch):
            return super().predict_step(batch, batch_idx, dataloader_idx)

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

    def decay_backbone(self) -> nn.Module:
        """The ViT (the whole timm model) that layer-wise decay runs over.

        Returns:
            The model.
        """
        return self.model

    def build_protocol_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the hyperparameters.

        Without a probe sweep: :func:`~explora_geo.tasks.protocols.build_optimizer`
        over the trainable tensors (layer-wise decay over the ViT). With one:
        one group per head at its rate times ``effective batch / 256``.

        Returns:
            The optimiser.
        """
        if self.probes is None:
            return super().build_protocol_optimizer()
        scale = 1.0
        if self._trainer is not None:
            scale = effective_batch_size(self.trainer) / PROBE_REFERENCE_BATCH
        groups = self.probes.param_groups(scale)
        lr, weight_decay = self.hparams['lr'], self.protocol.weight_decay
        if self.protocol.optimizer == 'sgd':
            return torch.optim.SGD(
                groups, lr=lr, momentum=0.9, weight_decay=weight_decay
            )
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
