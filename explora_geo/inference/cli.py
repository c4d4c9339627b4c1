"""``explora-geo predict``: tiled prediction from a downstream task's checkpoint.

.. versionadded:: 0.1
"""

import argparse
import os
from collections.abc import Mapping
from typing import Any

import torch
from torchgeo.tasks import BaseTask

from ..tasks.classification import ClassificationTask
from ..tasks.segmentation import SemanticSegmentationTask
from .tiles import predict_raster

__all__ = ('load_task', 'parse_bands', 'predict_from_args')


def _task_class(
    hparams: Mapping[str, Any], path: str | os.PathLike[str]
) -> type[BaseTask]:
    """The task a checkpoint's hyperparameters belong to."""
    if 'anchor_sizes' in hparams:
        raise ValueError(
            f'{path}: an object detection checkpoint; tiled raster prediction '
            'writes class maps and class probabilities, not boxes'
        )
    if 'decoder_channels' in hparams:
        return SemanticSegmentationTask
    if 'pooling' in hparams:
        return ClassificationTask
    raise ValueError(
        f'{path}: hyperparameters {sorted(hparams)} are not those of an explora_geo '
        'ClassificationTask or SemanticSegmentationTask'
    )


def load_task(path: str | os.PathLike[str]) -> BaseTask:
    """Rebuild a classification or segmentation task from its Lightning checkpoint.

    The file is read with ``weights_only=True``; the task is rebuilt from its
    hyperparameters (no pre-trained weights are downloaded) and its state
    dict loaded strictly.

    Args:
        path: A checkpoint written by Lightning while training the task.

    Returns:
        The task, in eval mode.

    Raises:
        ValueError: If the file is not such a checkpoint.
    """
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    hparams = (
        checkpoint.get('hyper_parameters') if isinstance(checkpoint, dict) else None
    )
    state = checkpoint.get('state_dict') if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, Mapping) or not isinstance(state, Mapping):
        raise ValueError(
            f'{path}: not a Lightning checkpoint of a task (expected '
            "'hyper_parameters' and 'state_dict')"
        )
    task = _task_class(hparams, path)(**hparams)
    task.load_state_dict(state)
    return task.eval()


def parse_bands(text: str | None) -> list[int | str] | None:
    """Comma-separated band names and 1-based indexes, e.g. ``'B04,B03,2'``.

    Args:
        text: The option's value.

    Returns:
        Names and indexes, or ``None`` for all bands.
    """
    if not text:
        return None
    items = [t.strip() for t in text.split(',') if t.strip()]
    return [int(t) if t.isdigit() else t for t in items]


def predict_from_args(args: argparse.Namespace) -> int:
    """Run :func:`~explora_geo.inference.tiles.predict_raster` for the command line.

    Uses ``raster``, ``checkpoint``, ``output``, ``bands``, ``tile_size``,
    ``overlap``, ``batch_size`` and ``vectors``, and, when the parser has
    them, ``mean`` and ``std`` (comma-separated, one per band), ``device``
    and ``progress``.

    Args:
        args: The parsed arguments.

    Returns:
        The exit status (0).

    Raises:
        ValueError: If only one of ``mean`` and ``std`` is given.
    """
    task = load_task(args.checkpoint)
    mean, std = getattr(args, 'mean', None), getattr(args, 'std', None)
    if (mean is None) != (std is None):
        raise ValueError('give both --mean and --std, or neither')
    normalize = None
    if mean is not None and std is not None:
        normalize = (
            [float(v) for v in str(mean).split(',')],
            [float(v) for v in str(std).split(',')],
        )
    result = predict_raster(
        task,
        args.raster,
        args.output,
        bands=parse_bands(args.bands),
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        normalize=normalize,
        device=getattr(args, 'device', None) or 'cpu',
        progress=bool(getattr(args, 'progress', False)),
        vector_path=args.vectors,
    )
    print(
        f'{result.kind}: {result.num_tiles} tiles -> {result.path} '
        f'({result.output}, {result.num_outputs} outputs)'
        + (f', polygons -> {result.vector_path}' if result.vector_path else '')
    )
    return 0
