"""``explora-geo``: the verbs Lightning's CLI has no word for.

* ``explora-geo demo``: the whole ExPLoRA pipeline on the bundled Sentinel-2 scene.
* ``explora-geo export CKPT``: merged encoder + Δ_T from a training checkpoint.
* ``explora-geo merge DELTA``: source weights + Δ_T file -> merged encoder checkpoint.
* ``explora-geo inspect NAME_OR_FILE``: trainable-parameter counts of an
  adapter config, or what a checkpoint / Δ_T file holds.
* ``explora-geo predict CKPT INPUT... -o OUT``: tiled prediction over rasters
  and Sentinel-2 products (several inputs: ``OUT`` is a folder).

Training itself runs through TorchGeo's CLI:
``torchgeo fit --config recipes/fmow_sentinel_explora.yaml``.

.. versionadded:: 0.1
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(',') if t.strip()) if text else ()


#: Suffixes that make an ``inspect`` target a file rather than a model name.
_FILE_SUFFIXES = ('.ckpt', '.safetensors', '.pt', '.pth', '.bin')


def _inspect(args: argparse.Namespace) -> int:
    import timm
    import torch

    from .adapter import (
        ExPLoRAConfig,
        apply_explora,
        count_trainable_parameters,
        load_delta,
    )

    target = args.target
    path = Path(target)
    if path.is_file():
        if path.suffix == '.safetensors':
            tensors, config, meta = load_delta(path)
            print(f'Δ_T file {path}')
            print(f'  adapter: {json.dumps(config.to_dict())}')
            print(f'  metadata: {json.dumps(meta)}')
            print(
                f'  tensors: {len(tensors)}, values: {sum(t.numel() for t in tensors.values()):,}'
            )
            return 0
        from .export import read_record
        from .models.checkpoints import read_checkpoint, unwrap_state_dict

        state = unwrap_state_dict(read_checkpoint(path))
        print(
            f'checkpoint {path}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values'
        )
        try:
            record = read_record(path)
        except (ValueError, KeyError):
            record = None
        if record is not None:
            spec = None if record.input_spec is None else record.input_spec.to_dict()
            print(
                f'  encoder export of {record.model}, source weights {record.weights}'
            )
            print(f'  input: {json.dumps(spec)}')
        for key in list(state)[: args.show]:
            print(f'  {key} {tuple(state[key].shape)}')
        return 0
    if path.suffix in _FILE_SUFFIXES or os.sep in target:
        raise FileNotFoundError(f'{target}: no such file (nor a model name)')
    if not timm.is_model(target):
        raise ValueError(
            f'{target}: neither a file nor a model name timm knows '
            '(e.g. explora_vitl_dino, vit_large_patch16_224)'
        )
    with torch.device('meta'):
        model = timm.create_model(target, num_classes=0)
    total = sum(p.numel() for p in model.parameters())
    config = ExPLoRAConfig(unfrozen_blocks=_ints(args.unfrozen_blocks), rank=args.rank)
    apply_explora(model, config)
    trainable = count_trainable_parameters(model)
    print(f'{target}: {total / 1e6:.1f}M parameters')
    print(f'  adapter {json.dumps(config.to_dict())}')
    print(
        f'  trainable: {trainable:,} ({trainable / 1e6:.1f}M, {100 * trainable / total:.1f}%)'
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .export import merge_delta

    try:
        out = merge_delta(
            args.delta, args.output, weights=args.weights, model=args.model
        )
    except ValueError as err:
        print(f'{err}; pass --model', file=sys.stderr)
        return 2
    print(f'merged encoder written to {out}')
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_from_checkpoint

    paths = export_from_checkpoint(args.checkpoint, args.output)
    for kind, path in paths.items():
        print(f'{kind}: {path}')
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        output=Path(args.output),
        weights=args.weights,
        fast=args.fast,
        seed=args.seed,
        seeds=args.seeds,
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference.cli import predict_from_args

    return predict_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``explora-geo`` argument parser.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog='explora-geo',
        description='ExPLoRA extended pre-training for remote sensing.',
    )
    sub = parser.add_subparsers(dest='command', required=True)

    demo = sub.add_parser(
        'demo', help='run the ExPLoRA pipeline on the bundled Sentinel-2 scene'
    )
    demo.add_argument('--output', default='outputs/demo', help='output folder')
    demo.add_argument(
        '--weights',
        default=None,
        help='source MAE weights (path, enum name or URL-backed enum); default: a source '
        'model pre-trained by the demo itself on natural-colour imagery',
    )
    demo.add_argument(
        '--fast', action='store_true', help='a shorter schedule (smoke test)'
    )
    demo.add_argument('--seed', type=int, default=0, help='first random seed')
    demo.add_argument(
        '--seeds',
        type=int,
        default=1,
        help='repeat ExPLoRA, evaluation and fine-tuning with this many seeds '
        '(--seed, --seed + 1, ...) and report their mean and spread',
    )
    demo.set_defaults(func=_demo)

    export = sub.add_parser(
        'export', help='merged encoder and Δ_T from a training checkpoint'
    )
    export.add_argument('checkpoint', help='Lightning checkpoint of an ExPLoRA task')
    export.add_argument('--output', default='exports', help='output folder')
    export.set_defaults(func=_export)

    merge = sub.add_parser(
        'merge', help='source weights + Δ_T file -> merged encoder checkpoint'
    )
    merge.add_argument('delta', help='Δ_T .safetensors file')
    merge.add_argument(
        '--weights',
        default=None,
        help='source weights (default: as recorded in the file)',
    )
    merge.add_argument(
        '--model', default=None, help='timm model name (default: as recorded)'
    )
    merge.add_argument('--output', default='merged_encoder.ckpt')
    merge.set_defaults(func=_merge)

    inspect = sub.add_parser(
        'inspect', help='adapter parameter counts, or what a file holds'
    )
    inspect.add_argument(
        'target', help='a model name (e.g. explora_vitl_dino) or a checkpoint/Δ_T file'
    )
    inspect.add_argument(
        '--unfrozen-blocks', default='-1', help='comma-separated, e.g. 0,-1'
    )
    inspect.add_argument('--rank', type=int, default=64)
    inspect.add_argument(
        '--show', type=int, default=10, help='tensors to list for a checkpoint'
    )
    inspect.set_defaults(func=_inspect)

    predict = sub.add_parser(
        'predict',
        help='tiled prediction over rasters and Sentinel-2 products',
        description='Predict over a raster or product with a checkpoint: bands, '
        'normalisation and tile size come from the checkpoint.',
    )
    from .inference.cli import add_arguments

    add_arguments(predict)
    predict.set_defaults(func=_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``explora-geo`` (bad input raises; see :func:`run`).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


def run(argv: Sequence[str] | None = None) -> int:
    """The ``explora-geo`` command: :func:`main`, with bad input as one line.

    A ``ValueError`` or ``FileNotFoundError`` (a wrong option, file, band or
    checkpoint; its message names it) is printed as ``explora-geo: error:
    ...`` on stderr, exit status 2, like argparse's own errors; anything
    else keeps its traceback.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f'explora-geo: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    raise SystemExit(run())
