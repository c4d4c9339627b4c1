"""The export files of ExPLoRA pre-training, written and read in one place.

An export of tag ``T`` is two files:

* ``T_encoder.ckpt``: the merged encoder W_S + Δ_T as a plain ViT, in the
  layout TorchGeo reads for ``weights=<path>``: ``hyper_parameters`` (``model``,
  the timm name, and the rest of the :class:`ExportRecord`) and ``state_dict``
  with keys under ``model.``; the :class:`~explora_geo.sensors.InputSpec` under
  :data:`~explora_geo.sensors.INPUT_SPEC_KEY`.
* ``T_delta.safetensors``: Δ_T, only the trainable tensors
  (:func:`~explora_geo.adapter.save_delta`), with the record as its metadata.

:func:`write_export` writes both from an adapted encoder, :func:`merge_delta`
rebuilds the merged encoder from source weights and a Δ_T file, and
:func:`read_record` reads the record (model, source weights, bands and
normalisation) back from either file. :func:`export_from_checkpoint` exports a
Lightning checkpoint of a pre-training task.

This module sits below the tasks: it imports them only inside
:func:`export_from_checkpoint`.

.. versionadded:: 0.1
"""

import copy
import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from torch import nn

from .adapter import apply_delta, load_delta, merge_and_unload, save_delta
from .atomic import write_atomic
from .models.weights import load_weights
from .sensors import INPUT_SPEC_KEY, InputSpec

if TYPE_CHECKING:
    from .tasks.pretraining import ExPLoRAPretrainingTask

#: File name endings of the two files of an export.
ENCODER_SUFFIX = '_encoder.ckpt'
DELTA_SUFFIX = '_delta.safetensors'


@dataclass(frozen=True)
class ExportRecord:
    """What an export says about itself.

    Attributes:
        model: timm name of the encoder.
        weights: Source weights W_S that Δ_T applies to (enum name or path).
        in_chans: Input channels of the encoder.
        img_size: Input size (position grid) of the encoder.
        global_step: Optimiser step the export was taken at.
        model_kwargs: Further timm arguments that rebuild the encoder.
        input_spec: Bands, normalisation and sizes of the encoder's input.

    .. versionadded:: 0.1
    """

    model: str
    weights: str | None = None
    in_chans: int | None = None
    img_size: int | None = None
    global_step: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_spec: InputSpec | None = None

    def metadata(self) -> dict[str, Any]:
        """JSON-compatible form (the Δ_T file's metadata)."""
        return {
            'model': self.model,
            'weights': self.weights,
            'in_chans': self.in_chans,
            'img_size': self.img_size,
            'global_step': self.global_step,
            'model_kwargs': dict(self.model_kwargs),
            INPUT_SPEC_KEY: None
            if self.input_spec is None
            else self.input_spec.to_dict(),
        }

    @classmethod
    def from_metadata(
        cls, meta: Mapping[str, Any], source: str | os.PathLike[str] = 'export'
    ) -> 'ExportRecord':
        """Inverse of :meth:`metadata`; fields it lacks are ``None``.

        Args:
            meta: The mapping.
            source: The file it comes from, for error messages.

        Returns:
            The record.

        Raises:
            ValueError: If there is no model name.
        """
        if not meta.get('model'):
            raise ValueError(f'{source}: no model name recorded (keys: {sorted(meta)})')
        spec = meta.get(INPUT_SPEC_KEY)
        return cls(
            model=str(meta['model']),
            weights=meta.get('weights'),
            in_chans=meta.get('in_chans'),
            img_size=meta.get('img_size'),
            global_step=meta.get('global_step'),
            model_kwargs=dict(meta.get('model_kwargs') or {}),
            input_spec=None if spec is None else InputSpec.from_dict(spec),
        )

    def create_model(self) -> nn.Module:
        """The encoder's architecture (random weights, no classifier head)."""
        kwargs = dict(self.model_kwargs)
        if self.img_size:
            kwargs['img_size'] = self.img_size
        if self.in_chans:
            kwargs['in_chans'] = self.in_chans
        return timm.create_model(self.model, num_classes=0, **kwargs)


def write_encoder(
    path: str | os.PathLike[str], encoder: nn.Module, record: ExportRecord
) -> Path:
    """Write a merged encoder in the layout ``weights=<path>`` loads.

    Args:
        path: Output file.
        encoder: A plain (merged) ViT.
        record: What to record with it.

    Returns:
        *path*.
    """
    meta = record.metadata()
    spec = meta.pop(INPUT_SPEC_KEY)
    checkpoint = {
        'hyper_parameters': meta,
        'state_dict': {f'model.{k}': v for k, v in encoder.state_dict().items()},
        INPUT_SPEC_KEY: spec,
    }
    return write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def write_export(
    adapted: nn.Module,
    dirpath: str | os.PathLike[str],
    tag: str,
    record: ExportRecord,
) -> dict[str, Path]:
    """Write ``<tag>_encoder.ckpt`` and ``<tag>_delta.safetensors``.

    Args:
        adapted: The adapted, unmerged encoder (left unchanged).
        dirpath: Output folder.
        tag: File name prefix.
        record: What to record in both files.

    Returns:
        Paths written: ``'encoder'`` and ``'delta'``.
    """
    dirpath = Path(dirpath)
    merged = merge_and_unload(copy.deepcopy(adapted)).eval()
    return {
        'encoder': write_encoder(dirpath / f'{tag}{ENCODER_SUFFIX}', merged, record),
        'delta': save_delta(
            adapted, dirpath / f'{tag}{DELTA_SUFFIX}', metadata=record.metadata()
        ),
    }


def read_record(path: str | os.PathLike[str]) -> ExportRecord:
    """The record of an export file (merged encoder or Δ_T).

    Args:
        path: ``*_encoder.ckpt`` or ``*.safetensors``.

    Returns:
        The record: model, source weights, input spec.

    Raises:
        ValueError: If the file is not an export.
    """
    path = Path(path)
    if path.suffix == '.safetensors':
        return ExportRecord.from_metadata(load_delta(path)[2], path)
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    hparams = (
        checkpoint.get('hyper_parameters') if isinstance(checkpoint, dict) else None
    )
    if not isinstance(hparams, dict) or 'state_dict' not in checkpoint:
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else []
        raise ValueError(
            f'{path}: not an encoder export (expected "hyper_parameters" and '
            f'"state_dict"; top-level keys: {keys})'
        )
    return ExportRecord.from_metadata(
        {**hparams, INPUT_SPEC_KEY: checkpoint.get(INPUT_SPEC_KEY)}, path
    )


def merge_delta(
    delta: str | os.PathLike[str],
    output: str | os.PathLike[str],
    weights: str | None = None,
    model: str | None = None,
) -> Path:
    """Apply a Δ_T file to its source weights and write the merged encoder.

    Args:
        delta: A Δ_T file.
        output: The merged encoder checkpoint to write.
        weights: Source weights W_S (default: as recorded in *delta*).
        model: timm name (default: as recorded in *delta*).

    Returns:
        *output*.
    """
    meta = dict(load_delta(delta)[2])
    if model is not None:
        meta['model'] = model
    if weights is not None:
        meta['weights'] = weights
    record = ExportRecord.from_metadata(meta, delta)
    encoder = record.create_model()
    load_weights(encoder, record.weights)
    apply_delta(encoder, delta, merge=True)
    return write_encoder(output, encoder, record)


def resolve_task_class(
    task: 'type[ExPLoRAPretrainingTask] | str | None', checkpoint: dict[str, Any]
) -> 'type[ExPLoRAPretrainingTask]':
    """Find the task class that wrote *checkpoint*.

    Looked up in this order: *task*; the ``explora_task`` entry explora_geo's
    tasks write; ``hyper_parameters._class_path`` (written by
    ``LightningCLI`` / ``torchgeo fit``). A class path is imported only from
    ``explora_geo`` or from modules already imported, so a checkpoint cannot
    make arbitrary code run.

    Args:
        task: A task class, its dotted path, or ``None``.
        checkpoint: The loaded Lightning checkpoint.

    Returns:
        The class.

    Raises:
        ValueError: If no class is named, or it cannot be imported safely.
        TypeError: If it is not an :class:`ExPLoRAPretrainingTask`.
    """
    from .tasks.pretraining import ExPLoRAPretrainingTask

    if task is None:
        hparams = checkpoint.get('hyper_parameters') or {}
        task = checkpoint.get('explora_task') or hparams.get('_class_path')
    if task is None:
        raise ValueError(
            'the checkpoint does not name its task class (no "explora_task" entry '
            'and no hyper_parameters._class_path); pass task=, e.g. '
            "'explora_geo.tasks.explora_mae.ExPLoRAMAE'"
        )
    if isinstance(task, str):
        module_name, _, name = task.rpartition('.')
        if not module_name:
            raise ValueError(f'task must be a dotted class path, got {task!r}')
        if module_name.split('.')[0] == 'explora_geo':
            module = importlib.import_module(module_name)
        elif module_name in sys.modules:
            module = sys.modules[module_name]
        else:
            raise ValueError(
                f'task class {task!r} is in a module that is not imported; import '
                'it first or pass the class itself'
            )
        obj = getattr(module, name, None)
        if obj is None:
            raise ValueError(f'{module_name} has no attribute {name!r}')
        task = obj
    if not isinstance(task, type) or not issubclass(task, ExPLoRAPretrainingTask):
        raise TypeError(f'{task!r} is not an ExPLoRAPretrainingTask subclass')
    return task


def export_from_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    task: 'type[ExPLoRAPretrainingTask] | str | None' = None,
    tag: str | None = None,
) -> dict[str, Path]:
    """Rebuild a pre-training task from its Lightning checkpoint and export it.

    The source weights are not needed: the checkpoint holds every tensor,
    adapter included.

    Args:
        ckpt_path: A checkpoint written by Lightning while training an
            ExPLoRA pre-training task.
        out_dir: Output folder.
        task: The task class or its dotted path, if the checkpoint does not
            name it.
        tag: File name prefix (default: the checkpoint's file name stem).

    Returns:
        Paths written: ``'encoder'`` (``<tag>_encoder.ckpt``, loadable with
        ``weights=<path>``) and ``'delta'`` (``<tag>_delta.safetensors``).

    Raises:
        FileNotFoundError: If *ckpt_path* does not exist.
        ValueError: If the file is not a Lightning checkpoint.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else []
        raise ValueError(
            f'{path}: not a Lightning checkpoint (no "state_dict"; top-level keys: {keys})'
        )
    cls = resolve_task_class(task, checkpoint)
    module = cls.load_from_checkpoint(path, map_location='cpu', weights_only=True)
    module.eval()
    return module.export(out_dir, tag if tag is not None else path.stem)
