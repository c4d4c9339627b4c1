"""Export the merged encoder and Δ_T from a Lightning pre-training checkpoint.

.. versionadded:: 0.1
"""

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .tasks.pretraining import ExPLoRAPretrainingTask


def resolve_task_class(
    task: type[ExPLoRAPretrainingTask] | str | None, checkpoint: dict[str, Any]
) -> type[ExPLoRAPretrainingTask]:
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
    task: type[ExPLoRAPretrainingTask] | str | None = None,
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
