"""ExPLoRA pre-training steps on a CUDA GPU: images/s, peak memory and MFU.

Runs the project's own pre-training tasks through ``lightning.Trainer`` on one
CUDA device, ViT-L at 224 px, random weights (nothing is downloaded):

* ``mae``: :class:`explora_geo.tasks.ExPLoRAMAE`, M-[1,L]-r32 (blocks 1 and L
  unfrozen, LoRA r32 on Q and V of the others) with decoder LoRA r32, mask
  ratio 0.75, the 512-wide 8-block decoder; patch size ``--mae-patch-size``
  (14 by default, to compare with DinoV2 at equal token count; 16 is the
  released MAE ViT-L/16).
* ``dinov2``: :class:`explora_geo.tasks.ExPLoRADINOv2`, D-[L]-r64 on the DinoV2
  ViT-L/14, 65,536 prototypes, 2 global 224 px + ``--local-crops`` 98 px
  crops, masked iBOT targets, shared-weight EMA teacher.

Each step is timed from ``on_train_batch_start`` to ``on_train_batch_end``
(augmentation on the GPU, forward, backward, AdamW, EMA), with
``torch.cuda.synchronize`` at both ends, median after ``--warmup`` steps.
Reported per task: images/s, peak allocated GPU memory
(``torch.cuda.max_memory_allocated``), the FLOPs of one step's forward and
backward (``torch.utils.flop_counter``; the DinoV2 teacher's forward
included) and MFU = FLOP/s divided by the device's dense bf16 peak, from
:data:`BF16_PEAK_TFLOPS` by device name or ``--peak-tflops``. With the
defaults both tasks finish in well under 5 minutes on an A100 or H100.

``tiles``: :func:`explora_geo.inference.tiles.predict_raster` on the GPU
over a synthetic 13-band raster (``--tile-raster`` px square), for a
zero-cost model, the small ViT + UPerNet of ``benchmarks/tile_inference.py``
and a ViT-L/16 + UPerNet, against each model's forward passes alone and
against the I/O floor, with one reader thread and with ``--tile-readers``
at most (default: what ``predict_raster`` chooses there, up to 4 on a
16-core host, started as the GPU waits for tiles): does
the pipeline keep the GPU busy? The process tunes glibc's allocator first,
as ``explora-geo predict`` does.

Without CUDA the script prints that it needs a CUDA GPU and exits with status
2 (``--dry-run`` runs the same code on the CPU with 2-block, 64-wide ViTs, to
check the script itself).

Usage: ``python benchmarks/gpu.py [--tasks mae,dinov2,tiles] [--batch-mae 64]
[--batch-dinov2 32] [--steps 10] [--warmup 3] [--precision auto|32|bf16]
[--peak-tflops 989]``
"""

import argparse
import gc
import inspect
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import lightning
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from explora_geo.adapter import ExPLoRAConfig
from explora_geo.inference import tune_allocator
from explora_geo.inference.tiles import TileGrid, default_readers, predict_raster
from explora_geo.precision import (
    PRECISION_CHOICES,
    PrecisionName,
    autocast,
    environment_report,
    resolve_precision,
)
from explora_geo.ssl import DINOv2Config
from explora_geo.tasks import ExPLoRADINOv2, ExPLoRAMAE
from explora_geo.tasks.segmentation import ViTUPerNet

from harness import RandomImages, StepTimer, add_precision_option, quiet_trainer
from tile_inference import (
    BANDS,
    NORMALIZE,
    FirstBands,
    io_floor,
    vit_upernet,
    write_raster,
)

#: Dense bf16 tensor-core peak in TFLOP/s by a substring of the device name,
#: from the vendor's data sheets; the first match wins.
BF16_PEAK_TFLOPS = (
    ('H100 PCIe', 756.0),
    ('H100 NVL', 835.0),
    ('H100', 989.0),  # SXM
    ('H200', 989.0),
    ('GH200', 989.0),
    ('B200', 2250.0),
    ('A100', 312.0),
    ('L40S', 362.0),
    ('L4', 121.0),
)

#: Exit status when no CUDA device is present.
NO_CUDA_EXIT = 2

TINY_VIT: dict[str, Any] = {'depth': 2, 'embed_dim': 64, 'num_heads': 2}
TINY_DECODER = {'decoder_embed_dim': 32, 'decoder_depth': 1, 'decoder_num_heads': 2}


def device_peak(name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a device, or None if not in the table.

    Args:
        name: ``torch.cuda.get_device_name()``.

    Returns:
        FLOP per second.
    """
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def build(name: str, args: argparse.Namespace) -> lightning.LightningModule:
    """The task, as its recipe builds it, with random weights."""
    tiny = args.dry_run
    if name == 'mae':
        patch = {'patch_size': args.mae_patch_size}
        return ExPLoRAMAE(
            model='explora_vitl_mae',
            img_size=args.img_size,
            adapter=ExPLoRAConfig(unfrozen_blocks=(0, -1), rank=32),
            decoder_lora_rank=32,
            model_kwargs={**TINY_VIT, **patch} if tiny else patch,
            decoder_kwargs=TINY_DECODER if tiny else None,
        )
    defaults = inspect.signature(ExPLoRADINOv2).parameters
    return ExPLoRADINOv2(
        model='explora_vitl_dino',
        img_size=args.img_size,
        adapter=ExPLoRAConfig(unfrozen_blocks=(-1,), rank=64),
        optimization=replace(defaults['optimization'].default, warmup_steps=1),
        objective=DINOv2Config(
            num_local_crops=args.local_crops,
            num_prototypes=1024 if tiny else 65536,
            freeze_last_layer_steps=0,
        ),
        model_kwargs=TINY_VIT if tiny else None,
    )


def step_flops(
    task: lightning.LightningModule,
    batch: dict[str, Tensor],
    precision: PrecisionName,
    device: str,
) -> int:
    """FLOPs of one training step's forward and backward."""
    task.to(device)
    counter = FlopCounterMode(display=False)
    with counter, autocast(precision, device):
        loss = task.training_step({'image': batch['image'].to(device)}, 0)
        assert isinstance(loss, Tensor)
        loss.backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(name: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Build, count FLOPs, train ``warmup + steps`` steps, report."""
    lightning.seed_everything(0, verbose=False)
    batch = args.batch_mae if name == 'mae' else args.batch_dinov2
    steps = args.warmup + args.steps
    data = DataLoader(
        RandomImages(batch * steps, args.img_size),
        batch_size=batch,
        pin_memory=device == 'cuda',
    )
    task = build(name, args)
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    flops = step_flops(task, next(iter(data)), args.resolved_precision, device)
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer()
    trainer = quiet_trainer(timer, args.resolved_precision, device, max_steps=steps)
    trainer.fit(task, data)
    step = statistics.median(timer.wall[args.warmup :])
    peak = torch.cuda.max_memory_allocated() if device == 'cuda' else 0
    del trainer, task
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()
    return {
        'task': name,
        'batch': batch,
        'trainable': trainable,
        'step_s': step,
        'images_per_s': batch / step,
        'peak_memory_gib': peak / 2**30,
        'step_tflop': flops / 1e12,
        'achieved_tflops': flops / step / 1e12,
    }


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def model_only_on(
    model: nn.Module,
    tiles: int,
    batch: int,
    tile: int,
    device: str,
    precision: PrecisionName = '32-true',
) -> float:
    """Seconds for the forward passes alone, on a batch already on *device*."""
    x = torch.randn(batch, BANDS, tile, tile, device=device)
    model.to(device).eval()
    with torch.inference_mode(), autocast(precision, device):
        model(x)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for i in range(0, tiles, batch):
            model(x[: min(batch, tiles - i)])
        _sync(device)
    return time.perf_counter() - start


def vitl_upernet(tiny: bool) -> nn.Module:
    """A ViT-L/16 (13 bands, 256 px) with a 256-wide UPerNet head."""
    torch.manual_seed(0)
    vit = cast(
        VisionTransformer,
        timm.create_model(
            'explora_vitl_mae',
            in_chans=BANDS,
            num_classes=0,
            img_size=256,
            dynamic_img_size=True,
            dynamic_img_pad=True,
            **(TINY_VIT if tiny else {}),
        ),
    )
    return ViTUPerNet(vit, num_classes=4, decoder_channels=32 if tiny else 256)


def tile_pipeline(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """:func:`predict_raster` on *device* against the model alone and the I/O floor.

    A synthetic 13-band uint16 raster (``benchmarks/tile_inference.py``), tiles
    of 256 px with 32 px overlap, class maps. The pipeline keeps the device
    busy when its time approaches the model's alone; the I/O floor is a plain
    windowed read of the raster plus the COG write of the model's own class map
    (``io_floor`` of ``benchmarks/tile_inference.py``).
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / 'synthetic_s2.tif'
        write_raster(src, args.tile_raster)
        tiles = len(TileGrid(args.tile_raster, args.tile_raster, 256, 32))
        out = Path(tmp) / 'out.tif'
        models = {
            'zero-cost (first 4 bands)': FirstBands(),
            'ViT 2 blocks x 32 + UPerNet': vit_upernet(),
            'ViT-L/16 + UPerNet': vitl_upernet(args.dry_run),
        }
        readers = args.tile_readers or default_readers(device)
        for name, model in models.items():
            alone = model_only_on(
                model, tiles, args.tile_batch, 256, device, args.tile_resolved
            )
            seconds: dict[int, list[float]] = {1: [], readers: []}
            for _ in range(2):
                for count in seconds:
                    _sync(device)
                    start = time.perf_counter()
                    predict_raster(
                        model,
                        src,
                        out,
                        tile_size=256,
                        overlap=32,
                        batch_size=args.tile_batch,
                        normalize=NORMALIZE,
                        device=device,
                        resume=False,
                        readers=count,
                        precision=args.tile_precision,
                    )
                    _sync(device)
                    seconds[count].append(time.perf_counter() - start)
            floor = min(
                io_floor(src, Path(tmp) / 'floor.tif', 256, out) for _ in range(2)
            )
            rows.append(
                {
                    'model': name,
                    'tiles': tiles,
                    'readers': readers,
                    'pipeline_s': min(seconds[1]),
                    'pipeline_readers_s': min(seconds[readers]),
                    'model_only_s': alone,
                    'io_floor_s': floor,
                }
            )
            model.cpu()
    return rows


def readers(count: int) -> str:
    return f'{count} reader' + ('s' if count != 1 else '')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', default='mae,dinov2,tiles')
    parser.add_argument(
        '--tile-raster', type=int, default=4096, help='side of the tiled raster'
    )
    parser.add_argument('--tile-batch', type=int, default=32)
    parser.add_argument(
        '--tile-precision',
        choices=PRECISION_CHOICES,
        default='32',
        help="the tile models' arithmetic, alone and in predict_raster (default: "
        'fp32, as in the figures so far)',
    )
    parser.add_argument(
        '--tile-readers',
        type=int,
        default=None,
        help='most reader threads (started on demand), timed against one (default: what predict_raster '
        'chooses on the device, explora_geo.inference.tiles.default_readers)',
    )
    parser.add_argument('--batch-mae', type=int, default=64)
    parser.add_argument('--batch-dinov2', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--mae-patch-size', type=int, default=14)
    parser.add_argument('--local-crops', type=int, default=8)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    add_precision_option(parser)
    parser.add_argument(
        '--peak-tflops',
        type=float,
        help='dense bf16 peak of the device in TFLOP/s (default: from the device name)',
    )
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='run on the CPU with 2-block, 64-wide ViTs to check the script',
    )
    args = parser.parse_args()
    tune_allocator()
    tasks = args.tasks.split(',')
    unknown = sorted(set(tasks) - {'mae', 'dinov2', 'tiles'})
    if unknown:
        parser.error(f'--tasks: unknown {unknown}; expected mae, dinov2, tiles')

    if args.dry_run:
        device = 'cpu'
        args.img_size, args.local_crops = 56, 2
        args.batch_mae = args.batch_dinov2 = 2
        args.steps, args.warmup = 2, 1
        args.tile_raster, args.tile_batch = 512, 4
    elif torch.cuda.is_available():
        device = 'cuda'
    else:
        print(
            'benchmarks/gpu.py measures training steps on a CUDA GPU and none is '
            'available here (torch.cuda.is_available() is False); run the CPU '
            'benchmarks in benchmarks/ instead, or --dry-run to check this script.',
            file=sys.stderr,
        )
        sys.exit(NO_CUDA_EXIT)
    args.resolved_precision = resolve_precision(args.precision, device)
    args.tile_resolved = resolve_precision(args.tile_precision, device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    name = torch.cuda.get_device_name() if device == 'cuda' else 'CPU (dry run)'
    peak = args.peak_tflops * 1e12 if args.peak_tflops else device_peak(name)
    print(environment_report())
    print(
        f'device: {name}; precision {args.resolved_precision} (--precision '
        f'{args.precision}); bf16 peak '
        + (f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)')
    )
    print(
        f'ViT-L, {args.img_size} px, MAE patch {args.mae_patch_size}, DinoV2 2 global '
        f'+ {args.local_crops} local crops; median of {args.steps} steps after '
        f'{args.warmup} warm-up'
    )
    rows = [measure(t, args, device) for t in tasks if t != 'tiles']
    if rows:
        print(
            '| task | batch | trainable | step (s) | img/s | peak memory (GiB) | '
            'step TFLOP | TFLOP/s | MFU (bf16 peak) |'
        )
        print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for r in rows:
        mfu = f'{r["achieved_tflops"] * 1e12 / peak:.1%}' if peak else 'n/a'
        print(
            f'| {r["task"]} | {r["batch"]} | {r["trainable"] / 1e6:.1f}M | '
            f'{r["step_s"]:.3f} | {r["images_per_s"]:.1f} | '
            f'{r["peak_memory_gib"]:.1f} | {r["step_tflop"]:.2f} | '
            f'{r["achieved_tflops"]:.1f} | {mfu} |'
        )
    if 'tiles' in tasks:
        tile_rows = tile_pipeline(args, device)
        print(
            '\nTiled prediction ('
            + ('fp32/TF32' if args.tile_precision == '32' else args.tile_resolved)
            + f'): {args.tile_raster} x {args.tile_raster} '
            f'x {BANDS} uint16, 256 px tiles, overlap 32, batch {args.tile_batch}, '
            f'class maps; ratios with {readers(tile_rows[0]["readers"])}\n'
        )
        print(
            '| model | tiles/s | pipeline s (1 reader) | '
            f'pipeline s ({readers(tile_rows[0]["readers"])}) | model only s | '
            'model only / pipeline '
            '| I/O floor s | floor / pipeline |'
        )
        print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
        for t in tile_rows:
            best = t['pipeline_readers_s']
            print(
                f'| {t["model"]} | {t["tiles"] / best:.1f} | '
                f'{t["pipeline_s"]:.3f} | {best:.3f} | '
                f'{t["model_only_s"]:.3f} | '
                f'{t["model_only_s"] / best:.2f} | {t["io_floor_s"]:.3f} | '
                f'{t["io_floor_s"] / best:.2f} |'
            )
        rows += tile_rows
    print(json.dumps(rows))


if __name__ == '__main__':
    main()
