"""``explora-geo predict``: tiled prediction from a downstream task's checkpoint.

.. versionadded:: 0.1
"""

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import rasterio
import torch
from torchgeo.tasks import (
    BaseTask,
    Classification,
    ObjectDetection,
    SemanticSegmentation,
)

from ..precision import PRECISION_CHOICES
from ..sensors import read_input_spec
from ..tasks.classification import TASK_CLASS_KEY, downstream_input_spec
from .allocator import tune_allocator
from .distributed import RasterJob, job_output, predict_many
from .sources import band_name_from_path, is_product
from .tiles import predict_raster
from .writers import (
    COMPRESSIONS,
    VECTOR_DRIVERS,
    check_compression,
    check_vector_path,
)

__all__ = (
    'FLAT_ARGUMENTS',
    'add_arguments',
    'group_flat_arguments',
    'load_task',
    'parse_bands',
    'predict_from_args',
    'task_class',
)


def task_class(
    hparams: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    path: str | os.PathLike[str],
) -> type[BaseTask]:
    """The task class a checkpoint records.

    LightningCLI (``torchgeo fit --config``) stores it as the ``_class_path``
    hyperparameter; explora_geo tasks also record it under
    :data:`~explora_geo.tasks.classification.TASK_CLASS_KEY`.

    Args:
        hparams: The checkpoint's hyperparameters.
        checkpoint: The checkpoint.
        path: The file, for messages.

    Returns:
        The class, a classification or segmentation task.

    Raises:
        ValueError: If no class is recorded, it is not a TorchGeo task of
            explora_geo or torchgeo, or it cannot predict rasters.
    """
    name = hparams.get('_class_path') or checkpoint.get(TASK_CLASS_KEY)
    if not isinstance(name, str) or '.' not in name:
        raise ValueError(
            f'{path}: the checkpoint does not record its task class (no '
            f"'_class_path' hyperparameter, no {TASK_CLASS_KEY!r} entry); save it "
            'with a current explora_geo task or train it with torchgeo fit'
        )
    module, _, attr = name.rpartition('.')
    # Only explora_geo is imported on a checkpoint's say-so; other classes
    # (torchgeo's tasks, a user's) must already be imported, so a file cannot
    # make arbitrary code run.
    if module.split('.')[0] == 'explora_geo':
        importlib.import_module(module)
    elif module not in sys.modules:
        raise ValueError(
            f'{path}: task class {name!r} is in a module that is not imported; '
            'import it before loading the checkpoint'
        )
    cls = getattr(sys.modules[module], attr, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseTask)):
        raise ValueError(f'{path}: {name} is not a TorchGeo task')
    if issubclass(cls, ObjectDetection):
        raise ValueError(
            f'{path}: an object detection checkpoint ({name}); tiled raster '
            'prediction writes class maps and class probabilities, not boxes'
        )
    if not issubclass(cls, Classification | SemanticSegmentation):
        raise ValueError(
            f'{path}: {name} is neither a classification nor a segmentation task'
        )
    return cls


def load_task(path: str | os.PathLike[str]) -> BaseTask:
    """Rebuild a classification or segmentation task from its Lightning checkpoint.

    The file is read with ``weights_only=True``; the task is rebuilt from its
    recorded class and hyperparameters (no pre-trained weights are loaded:
    the state dict holds them) and its state dict loaded strictly. What the
    model expects (:class:`~explora_geo.sensors.InputSpec`) is set as the
    task's ``input_spec`` attribute, from the checkpoint or, for older ones,
    from the model (sizes and class names only).

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
    cls = task_class(hparams, checkpoint, path)
    # LightningCLI's bookkeeping (_class_path, _instantiator) is not an argument.
    kwargs = {k: v for k, v in hparams.items() if not k.startswith('_')}
    parameters = inspect.signature(cls.__init__).parameters
    if 'protocol' in parameters and 'lora' in parameters:
        kwargs = group_flat_arguments(kwargs)
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(
            f'{path}: hyperparameters {unknown} are not arguments of {cls.__name__}'
        )
    kwargs['weights'] = None
    task = cls(**kwargs)
    task.load_state_dict(state)
    spec = read_input_spec(checkpoint)
    if spec is None:
        spec = downstream_input_spec(task)
    task.input_spec = spec  # type: ignore[assignment]
    return task.eval()


#: Flat hyperparameters of downstream-task checkpoints written before the
#: ``protocol`` and ``lora`` argument groups, by group and field.
FLAT_ARGUMENTS = {
    'lora_rank': ('lora', 'rank'),
    'lora_alpha': ('lora', 'alpha'),
    'lora_targets': ('lora', 'targets'),
    'optimizer': ('protocol', 'optimizer'),
    'weight_decay': ('protocol', 'weight_decay'),
    'scheduler': ('protocol', 'scheduler'),
    'warmup_epochs': ('protocol', 'warmup_epochs'),
    'min_lr': ('protocol', 'min_lr'),
    'layer_decay': ('protocol', 'layer_decay'),
    'drop_path_rate': ('protocol', 'drop_path_rate'),
    'label_smoothing': ('protocol', 'label_smoothing'),
}


def group_flat_arguments(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Move a downstream task's flat protocol and LoRA hyperparameters into groups.

    Checkpoints of the classification, segmentation and detection tasks
    written before ``protocol`` (:class:`~explora_geo.tasks.ProtocolConfig`)
    and ``lora`` (:class:`~explora_geo.tasks.LoRAConfig`) held those fields
    as separate arguments; this keeps them loadable.

    Args:
        hparams: The checkpoint's hyperparameters.

    Returns:
        The hyperparameters with any flat field inside its group.
    """
    grouped = {k: v for k, v in hparams.items() if k not in FLAT_ARGUMENTS}
    for key, (group, field) in FLAT_ARGUMENTS.items():
        if key in hparams:
            existing = grouped.get(group)
            values = dict(existing) if isinstance(existing, Mapping) else {}
            values.setdefault(field, hparams[key])
            grouped[group] = values
    return grouped


def parse_bands(text: str | None) -> list[str] | None:
    """Comma-separated band names, e.g. ``'B04,B03,B02'``.

    Args:
        text: The option's value.

    Returns:
        The names, or ``None``.
    """
    if not text:
        return None
    return [t.strip() for t in text.split(',') if t.strip()]


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in str(text).split(',')]


def _jobs(inputs: list[str], out: str, vectors: str | None) -> list[RasterJob]:
    """Inputs -> one job per product, outputs named after them in *out*."""
    paths = [Path(p) for p in inputs]
    products: list[str | list[str]] = []
    if len(paths) > 1 and _band_files(paths):
        products = [[str(p) for p in paths]]
    else:
        for path in paths:
            if path.is_dir() and not is_product(path):
                products += [str(p) for p in sorted(path.iterdir()) if _is_input(p)]
            else:
                products.append(str(path))
    if (
        vectors is not None
        and Path(vectors).suffix == ''
        and vectors.lower().lstrip('.') in {s.lstrip('.') for s in VECTOR_DRIVERS}
    ):
        vectors = '.' + vectors.lower().lstrip('.')
    if len(products) == 1 and not Path(out).is_dir():
        target = out
        vector = vectors
        if vectors is not None and vectors.startswith('.'):
            vector = str(Path(out).with_suffix(vectors))
        return [RasterJob(products[0], target, vector)]
    if vectors is not None and not vectors.startswith('.'):
        raise ValueError(
            f'--vectors {vectors}: with several inputs give a format (e.g. .gpkg); '
            'each output gets its own file'
        )
    jobs = []
    for product in products:
        first = product[0] if isinstance(product, list) else product
        output = job_output(first, out)
        vector = None if vectors is None else str(output.with_suffix(vectors))
        jobs.append(RasterJob(product, str(output), vector))
    names = [j.output for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f'several inputs would write the same output: {sorted(names)}')
    return jobs


def _is_input(path: Path) -> bool:
    if path.is_dir():
        return is_product(path)
    return path.suffix.lower() in ('.tif', '.tiff', '.vrt', '.jp2', '.json')


def _band_files(paths: list[Path]) -> bool:
    names = [band_name_from_path(p) for p in paths]
    if None in names or len(set(names)) != len(names):
        return False
    for path in paths:
        with rasterio.open(path) as src:
            if src.count != 1:
                return False
    return True


def predict_from_args(args: argparse.Namespace) -> int:
    """Run ``explora-geo predict``.

    Args:
        args: The parsed arguments (see :func:`explora_geo.cli.build_parser`).

    Returns:
        The exit status: 0, or 130 after an interruption (Ctrl-C, SIGTERM).

    Raises:
        ValueError: If only one of ``mean`` and ``std`` is given, or the
            compression level does not fit the compression.
    """
    if (args.mean is None) != (args.std is None):
        raise ValueError('give both --mean and --std, or neither')
    check_compression(args.compress, args.compress_level)
    jobs = _jobs(list(args.inputs), args.out, args.vectors)
    for job in jobs:
        if job.vectors is not None:
            check_vector_path(job.vectors)  # before the model is loaded
    # This process only predicts: freed batches stay with it for reuse.
    tune_allocator()
    task = load_task(args.checkpoint)
    normalize: Any = None
    if args.mean is not None:
        normalize = (_floats(args.mean), _floats(args.std))
    options: dict[str, Any] = {
        'input_bands': parse_bands(args.bands),
        'tile_size': args.tile_size,
        'overlap': args.overlap,
        'batch_size': args.batch_size,
        'normalize': normalize,
        'output': args.output,
        'blend': args.blend,
        'cog': args.cog,
        'compress': args.compress,
        'compress_level': args.compress_level,
        'score_dtype': args.scores,
        'resume': args.resume,
        'gdal_cache_mb': args.gdal_cache,
        'readers': args.readers,
        'precision': args.precision,
    }
    try:
        if len(jobs) == 1 and args.devices == 1:
            job = jobs[0]
            result = predict_raster(
                task,
                job.inputs,
                job.output,
                device=args.device,
                progress=args.progress,
                vector_path=job.vectors,
                **options,
            )
            resumed = (
                f', resumed after {result.resumed_rows} rows'
                if result.resumed_rows
                else ''
            )
            print(
                f'{result.kind}: {result.num_tiles} tiles -> {result.path} '
                f'({result.output}, {result.num_outputs} outputs, '
                f'{result.precision}{resumed})'
                + (f', polygons -> {result.vector_path}' if result.vector_path else '')
            )
            return 0
        accelerator = 'cpu' if str(args.device).startswith('cpu') else 'gpu'
        for summary in predict_many(
            task, jobs, accelerator=accelerator, devices=args.devices, **options
        ):
            print(
                f'rank {summary["rank"]}: {summary["kind"]}: {summary["tiles"]} tiles '
                f'-> {summary["output"]}'
            )
    except KeyboardInterrupt:
        print(
            'interrupted; finished rows are recorded: rerun the same command to '
            'continue',
            file=sys.stderr,
        )
        return 130
    return 0


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f'expected an integer, got {text!r}'
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(
                f'expected an integer >= {low}, got {value}'
            )
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` verb's arguments.

    Args:
        parser: The verb's parser.
    """
    parser.add_argument('checkpoint', help='Lightning checkpoint of a downstream task')
    parser.add_argument(
        'inputs',
        nargs='+',
        help='a raster (GeoTIFF, VRT), a Sentinel-2 .SAFE folder or folder of band '
        'files, band files of one product, a STAC item .json; or several rasters '
        '/ a folder of them (then -o is a folder)',
    )
    parser.add_argument(
        '-o',
        '--out',
        required=True,
        help='output GeoTIFF (a folder for several inputs)',
    )
    parser.add_argument(
        '--bands',
        default=None,
        help="names of the input's bands in file order, comma-separated, when "
        'the file does not name them (default: band descriptions)',
    )
    parser.add_argument(
        '--output',
        choices=('classes', 'scores'),
        default=None,
        help='class map, or probabilities per class (default: classes for '
        'segmentation, scores for classification)',
    )
    parser.add_argument(
        '--scores',
        choices=('uint8', 'float32'),
        default=None,
        help='score encoding: uint8 (probability x 254, nodata 255) or float32',
    )
    parser.add_argument(
        '--tile-size',
        type=_at_least(1),
        default=None,
        help="default: the model's input size",
    )
    parser.add_argument(
        '--overlap',
        type=_at_least(0),
        default=None,
        help='pixels shared by neighbouring tiles (default: a quarter of the tile '
        'for segmentation, 0 for classification)',
    )
    parser.add_argument(
        '--batch-size',
        type=_at_least(1),
        default=None,
        help='tiles per forward pass (default: as many pixels as 4 tiles of 256 px '
        'on the CPU, 16 on a GPU; 256 tiles of 32 px on the CPU)',
    )
    parser.add_argument(
        '--readers',
        type=_at_least(1),
        default=None,
        help='most threads reading tiles, each with its own handle of the input, '
        'started as the model waits for tiles (default: 1 on the CPU; on a GPU '
        'one per 4 CPU cores, at most 4)',
    )
    parser.add_argument(
        '--precision',
        choices=PRECISION_CHOICES,
        default='32',
        help="the model's arithmetic: 32 (fp32, the same outputs everywhere; "
        'default), bf16 (bf16 autocast) or auto (bf16 where the device computes '
        'it natively, fp16 on GPUs without bf16, else fp32)',
    )
    parser.add_argument(
        '--blend', choices=('cosine', 'linear', 'uniform'), default='cosine'
    )
    parser.add_argument(
        '--cog',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='Cloud Optimized GeoTIFF with overviews (--no-cog: tiled GeoTIFF)',
    )
    parser.add_argument(
        '--compress',
        choices=tuple(COMPRESSIONS),
        default='deflate',
        help='compression of the output (deflate: readable everywhere; zstd: '
        'needs GDAL >= 2.3 to read)',
    )
    parser.add_argument(
        '--compress-level',
        type=int,
        default=None,
        metavar='N',
        help="deflate 1-12 or zstd 1-22 (default 1, the fastest: GDAL's default, "
        'deflate 6, writes uint8 scores about 3x slower, in files about a fifth '
        'smaller)',
    )
    parser.add_argument(
        '--vectors',
        default=None,
        help='also write polygons (.gpkg, .geojson, .fgb, .parquet); with several '
        'inputs a format such as .gpkg',
    )
    parser.add_argument(
        '--mean', default=None, help="per-band means (default: the checkpoint's)"
    )
    parser.add_argument(
        '--std', default=None, help="per-band stds (default: the checkpoint's)"
    )
    parser.add_argument('--device', default='cpu', help="e.g. 'cuda'")
    parser.add_argument(
        '--devices',
        type=_at_least(1),
        default=1,
        help='processes (CPU) or GPUs sharing several inputs (Lightning DDP)',
    )
    parser.add_argument(
        '--resume',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='continue an interrupted run of the same command',
    )
    parser.add_argument(
        '--gdal-cache',
        type=_at_least(1),
        default=256,
        help="GDAL's block cache in MB (default: 256)",
    )
    parser.add_argument('--progress', action='store_true', help='show a progress bar')
