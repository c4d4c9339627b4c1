"""Throughput of the fMoW-Sentinel loader: rasterio decode + SatMAE scaling + resize.

Writes a temporary fMoW-Sentinel tree (CSV + 13-band uint16 GeoTIFFs, uncompressed
as GDAL writes by default) of real Sentinel-2 chips cut at random places and sizes
(48-160 px) from the shipped asset ``explora_geo/assets/s2_virginia_13band.tif``,
then iterates :class:`~explora_geo.datasets.FMoWSentinel` (10 bands,
``normalization='satmae'``, ``size=96``) through a shuffling ``DataLoader`` with 0
and 2 worker processes. The first batch (worker start-up) is not timed.

For scale it also times one training step (forward + backward + AdamW) of a
ViT-B/8 on 432 tokens, the token count of SatMAE's group-channel ViT-B at 96 px
(3 band groups x 144 patches), to tell whether the loader can keep up on CPU.

The ViT step runs at ``--precision`` (``auto``, the default: bf16 autocast
where the CPU computes bf16 natively, fp32 elsewhere).

Usage: ``python benchmarks/fmow_sentinel_loader.py [--images 1024] [--batch 64]
[--precision auto|32|bf16]``
"""

import argparse
import csv
import os
import tempfile
import time

import numpy as np
import rasterio
import timm
import torch
import torchvision
from rasterio.windows import Window
from torch.utils.data import DataLoader

import explora_geo
from explora_geo.datasets.fmow_sentinel import FMoWSentinel
from explora_geo.precision import (
    PrecisionName,
    autocast,
    environment_report,
    resolve_precision,
)

from harness import add_precision_option

ASSET = os.path.join(
    os.path.dirname(explora_geo.__file__), 'assets', 's2_virginia_13band.tif'
)


def write_tree(root: str, images: int, seed: int = 0) -> None:
    """Write *images* chips as the train split of an fMoW-Sentinel tree."""
    rng = np.random.default_rng(seed)
    rows = []
    with rasterio.open(ASSET) as src:
        scene = src.read()
        profile = src.profile | {
            'tiled': False,
            'compress': None,
            'interleave': 'pixel',
        }
        for profile_key in ('blockxsize', 'blockysize', 'predictor', 'zlevel'):
            profile.pop(profile_key, None)
        for i in range(images):
            location = i // 4
            size = int(rng.integers(48, 161))
            col, row = (int(v) for v in rng.integers(0, 512 - size, 2))
            loc_dir = os.path.join(
                root, 'fmow-sentinel', 'train', 'crop_field', f'crop_field_{location}'
            )
            os.makedirs(loc_dir, exist_ok=True)
            window = Window(col, row, size, size)
            out = profile | {
                'width': size,
                'height': size,
                'transform': src.window_transform(window),
            }
            path = os.path.join(loc_dir, f'crop_field_{location}_{i % 4}.tif')
            with rasterio.open(path, 'w', **out) as dst:
                dst.write(scene[:, row : row + size, col : col + size])
            rows.append(('crop_field', location, i % 4, '2017-06-21T00:00:00Z', ''))
    with open(os.path.join(root, 'train.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['category', 'location_id', 'image_id', 'timestamp', 'polygon'])
        writer.writerows(rows)


def loader_rate(root: str, workers: int, batch: int, epochs: int) -> float:
    """Samples per second of a shuffling DataLoader, first batch excluded."""
    dataset = FMoWSentinel(root, 'train', normalization='satmae', size=96)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    count = 0
    start = 0.0
    for epoch in range(epochs):
        for step, sample in enumerate(loader):
            if epoch == 0 and step == 0:
                start = time.perf_counter()
                continue
            count += len(sample['image'])
    return count / (time.perf_counter() - start)


def vit_step_rate(batch: int, precision: PrecisionName, steps: int = 3) -> float:
    """Samples per second of a ViT-B/8 training step on 432 tokens."""
    model = timm.create_model(
        'vit_base_patch16_224',
        img_size=(96, 288),
        patch_size=8,
        in_chans=4,
        num_classes=62,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, 96, 288)
    y = torch.randint(0, 62, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(precision, 'cpu'):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1024)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--vit-batch', type=int, default=2)
    add_precision_option(parser)
    args = parser.parse_args()
    precision = resolve_precision(args.precision, 'cpu')

    print(environment_report(torch.get_num_threads()))
    print(
        f'torchvision {torchvision.__version__}, rasterio {rasterio.__version__} '
        f'(GDAL {rasterio.__gdal_version__}), numpy {np.__version__}'
    )
    print(f'load average before the run: {os.getloadavg()[0]:.2f}')
    with tempfile.TemporaryDirectory() as root:
        write_tree(root, args.images)
        threads = torch.get_num_threads()
        rate = loader_rate(root, 0, args.batch, args.epochs)
        print(f'num_workers=0 (torch threads {threads}): {rate:.0f} samples/s')
        # DataLoader workers run torch single-threaded; the same in the main process:
        torch.set_num_threads(1)
        rate = loader_rate(root, 0, args.batch, args.epochs)
        print(f'num_workers=0 (torch threads 1): {rate:.0f} samples/s')
        torch.set_num_threads(threads)
        rate = loader_rate(root, 2, args.batch, args.epochs)
        print(f'num_workers=2: {rate:.0f} samples/s')
    rate = vit_step_rate(args.vit_batch, precision)
    print(
        f'ViT-B/8 training step, 432 tokens, batch {args.vit_batch}, {precision}: '
        f'{rate:.1f} samples/s'
    )


if __name__ == '__main__':
    main()
