"""Throughput of tiled raster prediction (explora_geo.inference.predict_raster).

Writes a synthetic 13-band uint16 GeoTIFF (Sentinel-2-like, 2048 x 2048 by
default: 32 px patches of four surface spectra plus noise) and predicts over it with two tiny models:

* ``pointwise``: a 1 x 1 convolution, so the time is almost all reading,
  tiling, blending and writing (the pipeline's own cost);
* ``vit-upernet``: a 2-block, 32-wide ViT with the UPerNet head of
  :class:`explora_geo.tasks.segmentation.ViTUPerNet`.

For each, the baseline is the same model's forward passes alone on random
batches of the same shape; the ratio says how much of the model's own
throughput the whole pipeline keeps. Prints a Markdown table.

Usage::

    python benchmarks/tile_inference.py [--size 2048] [--tile 256] [--overlap 32]
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import timm
import torch
from rasterio.transform import from_origin
from torch import nn

import explora_geo
from explora_geo.inference.tiles import TileGrid, predict_raster
from explora_geo.tasks.segmentation import ViTUPerNet

BANDS = 13


def write_raster(path: Path, size: int) -> None:
    """Land-cover-like data: 32 px patches of 4 surface types, plus sensor noise."""
    rng = np.random.default_rng(0)
    cells = -(-size // 32)
    cover = rng.integers(0, 4, (cells, cells))
    spectra = rng.integers(500, 3500, (4, BANDS))  # one spectrum per surface type
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
    }
    with rasterio.open(path, 'w', **profile) as dst:
        for top in range(0, size, 256):
            rows = min(256, size - top)
            labels = cover.repeat(32, 0).repeat(32, 1)[top : top + rows, :size]
            block = spectra[labels].transpose(2, 0, 1)
            block = block + rng.normal(0, 50, block.shape)
            dst.write(
                block.clip(0, 65535).astype(np.uint16),
                window=rasterio.windows.Window(0, top, size, rows),
            )


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    vit = timm.create_model(
        'explora_vitb_dino',
        depth=2,
        embed_dim=32,
        num_heads=2,
        in_chans=BANDS,
        num_classes=0,
        dynamic_img_size=True,
        dynamic_img_pad=True,
    )
    return {
        'pointwise': nn.Conv2d(BANDS, 4, 1),
        'vit-upernet': ViTUPerNet(vit, num_classes=4, decoder_channels=32),
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=2048)
    parser.add_argument('--tile', type=int, default=256)
    parser.add_argument('--overlap', type=int, default=32)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / 'synthetic_s2.tif'
        write_raster(src, args.size)
        megabytes = args.size * args.size * BANDS * 2 / 1e6
        tiles = len(TileGrid(args.size, args.size, args.tile, args.overlap))
        print(
            f'{args.size} x {args.size} x {BANDS} uint16 ({megabytes:.0f} MB), '
            f'{tiles} tiles of {args.tile} px, overlap {args.overlap}, batch '
            f'{args.batch}, {args.threads} threads; torch {torch.__version__}, '
            f'rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}), '
            f'explora_geo {explora_geo.__version__}, {platform.processor() or platform.machine()}'
        )
        print()
        print('| model | output | s | tiles/s | MB/s | model-only tiles/s | ratio |')
        print('| --- | --- | ---: | ---: | ---: | ---: | ---: |')
        for name, model in models().items():
            baseline = tiles / model_only(model, tiles, args.batch, args.tile)
            for output in ('classes', 'scores'):
                start = time.perf_counter()
                predict_raster(
                    model,
                    src,
                    Path(tmp) / f'{name}_{output}.tif',
                    tile_size=args.tile,
                    overlap=args.overlap,
                    batch_size=args.batch,
                    normalize=([2000.0] * BANDS, [1000.0] * BANDS),
                    output=output,  # type: ignore[arg-type]
                )
                seconds = time.perf_counter() - start
                rate = tiles / seconds
                print(
                    f'| {name} | {output} | {seconds:.2f} | {rate:.1f} | '
                    f'{megabytes / seconds:.1f} | {baseline:.1f} | '
                    f'{rate / baseline:.2f} |'
                )


if __name__ == '__main__':
    main()
