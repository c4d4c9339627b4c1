"""Tiled raster prediction: throughput, peak memory and tile-border effects.

Three measurements of :func:`explora_geo.inference.tiles.predict_raster` on
synthetic 13-band uint16 Sentinel-2-like rasters (32 px patches of four
surface spectra plus noise), side by side in one run:

* ``throughput``: a zero-cost and a ``pointwise`` model (1 x 1 convolution,
  so the time is the pipeline's own) against the I/O floor, a plain rasterio
  windowed read of the same raster plus the COG write of the same output
  (classes or scores); a 2-block, 32-wide ViT with the UPerNet head of
  :class:`explora_geo.tasks.segmentation.ViTUPerNet` against its forward
  passes alone (model-only) on batches of the same shape; and a model that
  only waits as long as that ViT takes (a model on an accelerator, leaving
  the CPU to the pipeline) against its waiting alone.
* ``stages``: the pointwise model's run taken apart: CPU and wall time of
  each stage (reading, forward passes, blending, encoding, writing, the
  final copy) in the thread that runs it (``--stages-output``).
* ``conversion``: ways to turn a batch of pixel-interleaved uint16 tiles
  into normalised float32 ``(B, C, T, T)`` input, the pipeline's first.
* ``allocator``: the ViT + UPerNet row again, in a fresh process per
  allocator setting: glibc's adaptive defaults against
  :func:`explora_geo.inference.tune_allocator` (what ``explora-geo predict``
  sets), with the page faults of a run.
* ``readers``: the zero-cost model (the pipeline's own speed) with one and
  more reader threads, on the raster as written (uncompressed) and on a
  DEFLATE-compressed COG copy (decoding costs more).
* ``memory``: peak RSS of a whole prediction (pointwise model, 4 classes) at
  several raster sizes, each in a fresh process.
* ``overlap``: how far tiled prediction of a ViT + UPerNet (briefly trained
  on the synthetic task) agrees with one whole-image prediction, by overlap.

The process tunes glibc's allocator as ``explora-geo predict`` does, unless
``--allocator default``. Prints Markdown tables.

Usage::

    python benchmarks/tile_inference.py
        [--parts throughput,stages,conversion,allocator,readers,memory,overlap]
        [--size 2048] [--stages-output classes|scores]
        [--memory-sizes 2048,4096] [--threads 1] [--allocator tuned|default]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import rasterio
import timm
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import explora_geo
from explora_geo.inference import tune_allocator
from explora_geo.inference.tiles import TileGrid, default_batch_size, predict_raster
from explora_geo.inference.writers import final_copy
from explora_geo.precision import environment_report
from explora_geo.tasks.segmentation import ViTUPerNet

BANDS = 13
NORMALIZE = ([2000.0] * BANDS, [1000.0] * BANDS)


def cover(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Surface type per 32 px cell and one spectrum per surface type."""
    rng = np.random.default_rng(seed)
    cells = -(-size // 32)
    return rng.integers(0, 4, (cells, cells)), rng.integers(500, 3500, (4, BANDS))


def write_raster(path: Path, size: int, seed: int = 0) -> None:
    """Land-cover-like data: 32 px patches of 4 surface types, plus sensor noise."""
    rng = np.random.default_rng(seed + 1)
    cells, spectra = cover(size, seed)
    profile = {
        'driver': 'GTiff',
        'height': size,
        'width': size,
        'count': BANDS,
        'dtype': 'uint16',
        'crs': 'EPSG:32618',
        'transform': from_origin(400_000, 4_200_000, 10, 10),
        'tiled': True,
        'blockxsize': 256,
        'blockysize': 256,
        'BIGTIFF': 'IF_SAFER',
    }
    with rasterio.open(path, 'w', **profile) as dst:
        for top in range(0, size, 256):
            rows = min(256, size - top)
            labels = cells[top // 32 : -(-(top + rows) // 32)].repeat(32, 0)
            labels = labels[: rows + top % 32][top % 32 :].repeat(32, 1)[:, :size]
            block = spectra[labels].transpose(2, 0, 1).astype(np.float32)
            block += rng.normal(0, 50, block.shape).astype(np.float32)
            dst.write(
                block.clip(0, 65535).astype(np.uint16),
                window=Window(0, top, size, rows),
            )


def vit_upernet(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    vit = cast(
        VisionTransformer,
        timm.create_model(
            'explora_vitb_dino',
            depth=2,
            embed_dim=32,
            num_heads=2,
            in_chans=BANDS,
            num_classes=0,
            patch_size=16,
            img_size=128,
            dynamic_img_size=True,
            dynamic_img_pad=True,
        ),
    )
    return ViTUPerNet(vit, num_classes=classes, decoder_channels=32)


def pointwise() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(BANDS, 4, 1)


class FirstBands(nn.Module):
    """A model that costs nothing: the first four bands are the four logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :4]


def model_only(model: nn.Module, tiles: int, batch: int, tile: int) -> float:
    """Seconds for the forward passes alone, on random batches."""
    x = torch.randn(batch, BANDS, tile, tile)
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        for i in range(0, tiles, batch):
            model(x[: min(batch, tiles - i)])
    return time.perf_counter() - start


def io_floor(
    src: Path, dst: Path, tile: int, output: Path, level: int | None = None
) -> float:
    """A plain rasterio windowed read of every band + COG write of *output*.

    What the pipeline cannot avoid: the input read once, tile by tile, and the
    output raster (the pipeline's own result, held in memory beforehand, so
    that its compression costs exactly what the prediction's does) written
    tile by tile and copied into a COG with the same options.
    """
    with rasterio.open(output) as o:
        result, out_profile = o.read(), o.profile
    resampling = 'NEAREST' if result.shape[0] == 1 else 'AVERAGE'
    start = time.perf_counter()
    work = dst.with_suffix('.work.tif')
    with rasterio.open(src) as s:
        profile = {
            'driver': 'GTiff',
            'height': s.height,
            'width': s.width,
            'count': result.shape[0],
            'dtype': result.dtype,
            'nodata': out_profile.get('nodata'),
            'crs': s.crs,
            'transform': s.transform,
            'tiled': True,
            'blockxsize': 256,
            'blockysize': 256,
        }
        with rasterio.open(work, 'w', **profile) as d:
            for top in range(0, s.height, tile):
                for left in range(0, s.width, tile):
                    window = Window(left, top, tile, tile).intersection(
                        Window(0, 0, s.width, s.height)
                    )
                    s.read(window=window)
                    rows, cols = int(window.height), int(window.width)
                    d.write(
                        result[:, top : top + rows, left : left + cols], window=window
                    )
    final_copy(work, dst, True, resampling, 'deflate', level)
    work.unlink()
    return time.perf_counter() - start


class Waits(nn.Module):
    """A model off the CPU: waits as long as a given model takes, costs nothing.

    What an accelerator looks like to the pipeline: the model's time passes
    while the CPU is free for reading and writing.
    """

    def __init__(self, seconds_per_tile: float) -> None:
        super().__init__()
        self.seconds_per_tile = seconds_per_tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds_per_tile * x.shape[0])
        return x[:, :4]


def pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`predict_raster` options every measurement shares."""
    return {
        'tile_size': args.tile,
        'overlap': args.overlap,
        'batch_size': args.batch,
        'normalize': NORMALIZE,
        'resume': False,
        'compress_level': args.compress_level,
    }


def timed(fn: object, *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start


def throughput(args: argparse.Namespace, tmp: Path) -> None:
    src = tmp / 'synthetic_s2.tif'
    write_raster(src, args.size)
    with rasterio.open(src) as s:
        s.read()  # the first read of a new file is slow: time none of it
    megabytes = args.size * args.size * BANDS * 2 / 1e6
    tiles = len(TileGrid(args.size, args.size, args.tile, args.overlap))
    print(
        f'\n### Throughput: {args.size} x {args.size} x {BANDS} uint16 '
        f'({megabytes:.0f} MB), {tiles} tiles of {args.tile} px, overlap '
        f'{args.overlap}, batch {args.batch}\n'
    )
    print(
        '| model | output | pipeline s | tiles/s | model only s | '
        'baseline | baseline s | ratio |'
    )
    print('| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |')
    options = pipeline_options(args)
    vit = vit_upernet()
    vit_alone = model_only(vit, tiles, args.batch, args.tile)
    models = {
        'zero-cost (first 4 bands)': (FirstBands(), 'floor'),
        'pointwise (1 x 1 conv)': (pointwise(), 'floor'),
        'vit-upernet': (vit, 'model'),
        "off-CPU model, vit-upernet's time": (Waits(vit_alone / tiles), 'model'),
    }
    for name, (model, against) in models.items():
        alone = (
            vit_alone
            if model is vit
            else model_only(model, tiles, args.batch, args.tile)
        )
        for output in ('classes', 'scores'):
            out = tmp / f'p_{output}.tif'
            predict_raster(model, src, out, output=output, **options)  # warm-up
            seconds = min(
                timed(predict_raster, model, src, out, output=output, **options)
                for _ in range(args.repeats)
            )
            if against == 'floor':
                label = 'read + COG write'
                baseline = min(
                    io_floor(
                        src, tmp / 'floor.tif', args.tile, out, args.compress_level
                    )
                    for _ in range(args.repeats)
                )
            else:
                label, baseline = 'model only', alone
            print(
                f'| {name} | {output} | {seconds:.3f} | {tiles / seconds:.1f} | '
                f'{alone:.3f} | {label} | {baseline:.3f} | {baseline / seconds:.2f} |'
            )


#: ``stages``: the pipeline's functions timed in whichever thread runs them.
STAGES = (
    ('_Tiles', 'fill', 'read, convert, normalise'),
    (None, '_forward', 'forward pass'),
    ('_Sink', 'add_batch', 'blend (activation, weighted sums)'),
    ('_Rows', 'encode', 'encode (argmax / scale)'),
    ('PartialOutput', 'write', 'write rows'),
    ('PartialOutput', 'open', 'open the work file'),
    ('PartialOutput', 'commit', 'commit'),
    (None, 'final_copy', 'final COG copy'),
)


def stages(args: argparse.Namespace, tmp: Path) -> None:
    """CPU and wall time of each pipeline stage, by thread (pointwise model).

    Wraps the pipeline's own functions (module internals, so this part
    follows the code it measures) and reports the fastest of the runs.
    """
    import collections
    import functools
    import threading

    from explora_geo.inference import tiles as module

    src = tmp / 'stages_s2.tif'
    write_raster(src, args.size)
    events: list[tuple[str, str, float, float, float]] = []
    saved = []
    for owner_name, name, label in STAGES:
        owner = module if owner_name is None else getattr(module, owner_name)
        original = getattr(owner, name)

        def wrapper(*a: Any, _f: Any = original, _label: str = label, **k: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return _f(*a, **k)
            finally:
                events.append(
                    (
                        threading.current_thread().name,
                        _label,
                        start,
                        time.perf_counter(),
                        time.thread_time() - cpu,
                    )
                )

        saved.append((owner, name, original))
        setattr(owner, name, functools.wraps(original)(wrapper))
    options = {**pipeline_options(args), 'output': args.stages_output}
    model, out = pointwise(), tmp / 'stages_out.tif'
    try:
        predict_raster(model, src, out, **options)  # warm-up
        best: tuple[float, float, list[Any]] | None = None
        for _ in range(max(args.repeats, 5)):
            events.clear()
            start = time.perf_counter()
            predict_raster(model, src, out, **options)
            seconds = time.perf_counter() - start
            if best is None or seconds < best[0]:
                best = (seconds, start, list(events))
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    assert best is not None
    seconds, start, runs = best
    print(
        f'\n### Stages: pointwise model, {args.stages_output}, {args.size} x '
        f'{args.size}, the fastest of {max(args.repeats, 5)} runs: '
        f'{seconds * 1e3:.1f} ms\n'
    )
    print('| thread | stage | calls | CPU ms | wall ms | first starts | last ends |')
    print('| --- | --- | ---: | ---: | ---: | ---: | ---: |')
    table: dict[tuple[str, str], list[float]] = collections.defaultdict(
        lambda: [0, 0.0, 0.0, float('inf'), 0.0]
    )
    for thread, label, begin, end, cpu in runs:
        row = table[(thread, label)]
        row[0] += 1
        row[1] += cpu
        row[2] += end - begin
        row[3] = min(row[3], begin - start)
        row[4] = max(row[4], end - start)
    for (thread, label), (calls, cpu, wall, first, last) in sorted(
        table.items(), key=lambda item: item[1][3]
    ):
        print(
            f'| {thread} | {label} | {calls:.0f} | {cpu * 1e3:.1f} | '
            f'{wall * 1e3:.1f} | {first * 1e3:.1f} | {last * 1e3:.1f} |'
        )
    for path in (src, out):
        path.unlink()


def conversion(args: argparse.Namespace) -> None:
    """Ways to turn a batch of pixel-interleaved uint16 tiles into model input.

    Each variant converts 4 tiles of 13 x 256 x 256 into normalised float32
    ``(B, C, T, T)`` (or, where marked, only converts); the first is what
    the pipeline does.
    """
    from explora_geo.inference import tiles as tiles_module

    batch, size = default_batch_size('cpu', args.tile), args.tile
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(
        rng.integers(0, 5000, (batch, size, size, BANDS), dtype=np.uint16)
    )
    bands = pixels.permute(0, 3, 1, 2)  # (B, C, T, T) view of the file's layout
    x = torch.empty(batch, BANDS, size, size)
    mean = torch.as_tensor(NORMALIZE[0]).view(1, -1, 1, 1)
    std = torch.as_tensor(NORMALIZE[1]).view(1, -1, 1, 1)
    floats = torch.empty(size, size, BANDS)
    small = torch.empty(BANDS, size, size, dtype=torch.uint16)
    eye = torch.eye(BANDS)

    norm = tiles_module._normalizer(NORMALIZE, BANDS, torch.device('cpu'))

    def pipeline() -> None:
        tiles_module._convert(x, bands, None, norm)

    def convert_only() -> None:
        for i in range(batch):
            x[i : i + 1].copy_(bands[i : i + 1])

    def float_then_transpose() -> None:
        for i in range(batch):
            floats.copy_(pixels[i])
            x[i].copy_(floats.permute(2, 0, 1)).sub_(mean[0]).div_(std[0])

    def uint16_transpose_then_convert() -> None:
        for i in range(batch):
            small.copy_(bands[i])
            x[i].copy_(small).sub_(mean[0]).div_(std[0])

    def identity_product() -> None:
        for i in range(batch):
            floats.copy_(pixels[i])
            flat = floats.view(-1, BANDS)
            torch.mm(eye, flat.t(), out=x[i].view(BANDS, -1))

    variants = {
        "the pipeline's (per tile: copy from the (C, T, T) view, subtract, "
        'divide)': pipeline,
        'the same copy alone (conversion only)': convert_only,
        'convert in place, transpose the float32 tile, normalise': float_then_transpose,
        'transpose as uint16, convert, normalise': uint16_transpose_then_convert,
        'convert in place, transpose by a product with the identity '
        '(conversion only)': identity_product,
    }
    pipeline()
    reference = x.clone()
    uint16_transpose_then_convert()
    assert torch.equal(x, reference), 'variants must compute the same input'
    print(
        f'\n### Conversion: {batch} pixel-interleaved uint16 tiles of {BANDS} x '
        f'{size} x {size} -> normalised float32, {torch.get_num_threads()} '
        'thread(s)\n'
    )
    print('| variant | ms per batch |')
    print('| --- | ---: |')
    for name, fn in variants.items():
        fn()
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20):
                fn()
            runs.append((time.perf_counter() - start) / 20)
        print(f'| {name} | {min(runs) * 1e3:.2f} |')


def allocator_child(src: str, args: argparse.Namespace) -> None:
    """Time the ViT + UPerNet row in this (fresh) process; print JSON."""
    vit = vit_upernet()
    alone = min(
        model_only(vit, args.tiles, args.batch, args.tile) for _ in range(args.repeats)
    )
    result: dict[str, float] = {'model_only': alone}
    out = Path(src).with_name(f'alloc_{args.allocator}.tif')
    options = pipeline_options(args)
    for output in ('classes', 'scores'):
        predict_raster(vit, src, out, output=output, **options)  # warm-up
        runs = []
        for _ in range(args.repeats):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds = timed(predict_raster, vit, src, out, output=output, **options)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            runs.append((seconds, faults))
        result[output], result[f'{output}_faults'] = min(runs)
    print(json.dumps(result))


def allocator(args: argparse.Namespace, tmp: Path) -> None:
    src = tmp / 'alloc_s2.tif'
    write_raster(src, args.size)
    tiles = len(TileGrid(args.size, args.size, args.tile, args.overlap))
    print(
        f'\n### Allocator: vit-upernet, {args.size} x {args.size}, a fresh process '
        f'per setting (warm-up run, best of {args.repeats})\n'
    )
    print(
        '| allocator | output | pipeline s | model only s | ratio | '
        'page faults per run |'
    )
    print('| --- | --- | ---: | ---: | ---: | ---: |')
    names = {
        'default': "glibc's adaptive defaults",
        'tuned': 'tune_allocator() (explora-geo predict)',
    }
    for setting, name in names.items():
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                '--allocator-child',
                str(src),
                str(tiles),
                '--allocator',
                setting,
                '--threads',
                str(args.threads),
                '--tile',
                str(args.tile),
                '--overlap',
                str(args.overlap),
                '--batch',
                str(args.batch),
                '--repeats',
                str(args.repeats),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, 'OMP_NUM_THREADS': str(args.threads)},
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        for output in ('classes', 'scores'):
            print(
                f'| {name} | {output} | {result[output]:.3f} | '
                f'{result["model_only"]:.3f} | '
                f'{result["model_only"] / result[output]:.2f} | '
                f'{result[f"{output}_faults"]:,} |'
            )
    src.unlink()


def readers_part(args: argparse.Namespace, tmp: Path) -> None:
    src = tmp / 'readers_s2.tif'
    write_raster(src, args.size)
    packed = tmp / 'readers_s2_deflate.tif'
    final_copy(src, packed, True, 'NEAREST')
    tiles = len(TileGrid(args.size, args.size, args.tile, args.overlap))
    counts = sorted({1, 2, max(2, (os.cpu_count() or 1) // 2)})
    print(
        f'\n### Reader threads: zero-cost model, {args.size} x {args.size}, '
        f'{tiles} tiles, class maps, {os.cpu_count()} CPUs\n'
    )
    print('| input | ' + ' | '.join(f'{n} reader(s) s' for n in counts) + ' |')
    print('| --- |' + ' ---: |' * len(counts))
    options = {**pipeline_options(args), 'output': 'classes'}
    model, out = FirstBands(), tmp / 'readers_out.tif'
    for name, path in (('uncompressed', src), ('DEFLATE COG', packed)):
        cells = []
        for count in counts:
            predict_raster(model, path, out, readers=count, **options)  # warm-up
            seconds = min(
                timed(predict_raster, model, path, out, readers=count, **options)
                for _ in range(args.repeats)
            )
            cells.append(f'{seconds:.3f}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    for path in (src, packed, out):
        path.unlink()


def memory_child(path: str, out: str, tile: int, overlap: int, cache: int) -> None:
    start = time.perf_counter()
    predict_raster(
        pointwise(),
        path,
        out,
        tile_size=tile,
        overlap=overlap,
        normalize=NORMALIZE,
        resume=False,
        gdal_cache_mb=cache,
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({'rss_mb': rss, 'seconds': time.perf_counter() - start}))


def memory(args: argparse.Namespace, tmp: Path) -> None:
    print(
        f'\n### Peak RSS: pointwise model, 4 classes, tiles of {args.tile} px, '
        f'overlap {args.overlap}, GDAL cache {args.gdal_cache} MB, fresh process each\n'
    )
    print('| raster | input GB | s | peak RSS MB | ratio to first |')
    print('| --- | ---: | ---: | ---: | ---: |')
    first = None
    for size in args.memory_sizes:
        src = tmp / f'mem_{size}.tif'
        write_raster(src, size)
        env = {**os.environ, 'OMP_NUM_THREADS': str(args.threads)}
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                '--memory-child',
                str(src),
                str(tmp / f'mem_{size}_out.tif'),
                '--tile',
                str(args.tile),
                '--overlap',
                str(args.overlap),
                '--gdal-cache',
                str(args.gdal_cache),
                '--allocator',
                args.allocator,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        first = first or result['rss_mb']
        print(
            f'| {size} x {size} x {BANDS} uint16 | {size * size * BANDS * 2 / 1e9:.2f} | '
            f'{result["seconds"]:.1f} | {result["rss_mb"]:.0f} | '
            f'{result["rss_mb"] / first:.2f} |'
        )
        src.unlink()
        (tmp / f'mem_{size}_out.tif').unlink()


def overlap_sweep(args: argparse.Namespace, tmp: Path) -> None:
    size, tile = 512, 128
    model = vit_upernet()
    # A short training on the synthetic task (surface type from the spectra
    # in context), so that the model's predictions depend on its input.
    cells, spectra = cover(2048, seed=3)
    labels = torch.from_numpy(cells.repeat(32, 0).repeat(32, 1))
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in NORMALIZE)
    image = torch.from_numpy(spectra[labels.numpy()].transpose(2, 0, 1)).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(args.train_steps):
        ys, xs = rng.integers(0, 2048 - tile, (2, 8))
        x = torch.stack(
            [image[:, y : y + tile, s : s + tile] for y, s in zip(ys, xs, strict=True)]
        )
        x = (x + 50 * torch.randn_like(x) - mean) / std
        target = torch.stack(
            [labels[y : y + tile, s : s + tile] for y, s in zip(ys, xs, strict=True)]
        )
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    src = tmp / 'sweep.tif'
    write_raster(src, size, seed=7)
    with rasterio.open(src) as s:
        x = (torch.from_numpy(s.read().astype(np.float32)) - mean) / std
    with torch.inference_mode():
        whole = model(x[None])[0].argmax(0).numpy()
    print(
        f'\n### Tile borders: ViT + UPerNet (patch 16, trained {args.train_steps} '
        f'steps, loss {loss.item():.2f}), {size} x {size} raster, tiles of {tile} px\n'
    )
    print('| overlap | overlap / tile | agreement with whole-image prediction |')
    print('| ---: | ---: | ---: |')
    for overlap in (0, 16, 32, 48, 64):
        out = tmp / f'sweep_{overlap}.tif'
        predict_raster(
            model,
            src,
            out,
            tile_size=tile,
            overlap=overlap,
            normalize=NORMALIZE,
            resume=False,
        )
        with rasterio.open(out) as d:
            agreement = float((d.read(1) == whole).mean())
        print(f'| {overlap} | {overlap / tile:.3f} | {100 * agreement:.1f} % |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--parts',
        default='throughput,stages,conversion,allocator,readers,memory,overlap',
    )
    parser.add_argument('--size', type=int, default=2048)
    parser.add_argument(
        '--stages-output',
        choices=('classes', 'scores'),
        default='classes',
        help='the output the stages part times',
    )
    parser.add_argument('--tile', type=int, default=256)
    parser.add_argument('--overlap', type=int, default=32)
    parser.add_argument(
        '--batch',
        type=int,
        default=None,
        help='tiles per batch (default: the CPU default of predict_raster for the '
        'tile size)',
    )
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument(
        '--compress-level',
        type=int,
        default=None,
        help="the output's DEFLATE level (default: predict_raster's, 1)",
    )
    parser.add_argument(
        '--memory-sizes',
        type=lambda t: [int(v) for v in t.split(',')],
        default=[2048, 4096],
    )
    parser.add_argument('--gdal-cache', type=int, default=256)
    parser.add_argument('--train-steps', type=int, default=150)
    parser.add_argument('--repeats', type=int, default=3, help='best of N runs')
    parser.add_argument(
        '--allocator',
        choices=('tuned', 'default'),
        default='tuned',
        help="tuned: explora_geo.inference.tune_allocator() first, as 'explora-geo "
        "predict' does (default); default: glibc's adaptive thresholds",
    )
    parser.add_argument('--memory-child', nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        '--allocator-child', nargs=2, default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.batch is None:
        args.batch = default_batch_size('cpu', args.tile)
    torch.set_num_threads(args.threads)
    tuned = args.allocator == 'tuned' and tune_allocator()
    if args.allocator_child:
        src, tiles = args.allocator_child
        args.tiles = int(tiles)
        allocator_child(src, args)
        return
    if args.memory_child:
        path, out = args.memory_child
        memory_child(path, out, args.tile, args.overlap, args.gdal_cache)
        return
    print(
        f'{args.threads} torch threads; torch {torch.__version__}, rasterio '
        f'{rasterio.__version__} (GDAL {rasterio.__gdal_version__}), explora_geo '
        f'{explora_geo.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.1f}; inference in fp32; allocator: '
        + ('tune_allocator()' if tuned else "glibc's adaptive defaults")
    )
    print(environment_report(args.threads))
    parts = args.parts.split(',')
    with tempfile.TemporaryDirectory() as tmp:
        if 'throughput' in parts:
            throughput(args, Path(tmp))
        if 'stages' in parts:
            stages(args, Path(tmp))
        if 'conversion' in parts:
            conversion(args)
        if 'allocator' in parts:
            allocator(args, Path(tmp))
        if 'readers' in parts:
            readers_part(args, Path(tmp))
        if 'memory' in parts:
            memory(args, Path(tmp))
        if 'overlap' in parts:
            overlap_sweep(args, Path(tmp))


if __name__ == '__main__':
    main()
