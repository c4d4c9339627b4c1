#!/usr/bin/env python3

"""Write a tiny fake SpaceNet 1 (Rio, 3-band) in torchgeo's extracted layout.

SN1_buildings/train/3band/3band_AOI_1_RIO_img<i>.tif (RGB uint8 GeoTIFFs,
16 x 16 px; torchgeo reads every 3-band chip at 406 x 439 px) and
SN1_buildings/train/geojson/Geo_AOI_1_RIO_img<i>.geojson with one square
building per chip, plus the unlabelled test split's 3-band chips.
"""

import json
import os
import shutil

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = os.path.dirname(os.path.abspath(__file__))
DATASET = 'SN1_buildings'
SIZE = 16
#: Pixel size in degrees (WGS 84), about 50 cm as in the release.
RES = 4.5e-6
NUM_TRAIN = 10
NUM_TEST = 2


def write_chip(path: str, west: float, north: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(3, SIZE, SIZE), dtype=np.uint8)
    profile = {
        'driver': 'GTiff',
        'width': SIZE,
        'height': SIZE,
        'count': 3,
        'dtype': 'uint8',
        'crs': 'EPSG:4326',
        'transform': from_origin(west, north, RES, RES),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)


def write_building(path: str, west: float, north: float) -> None:
    # A square over the chip's pixels 4..12 in both directions.
    x0, x1 = west + 4 * RES, west + 12 * RES
    y0, y1 = north - 12 * RES, north - 4 * RES
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    collection = {
        'type': 'FeatureCollection',
        'features': [
            {
                'type': 'Feature',
                'properties': {},
                'geometry': {'type': 'Polygon', 'coordinates': [ring]},
            }
        ],
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(collection, f)


def main() -> None:
    shutil.rmtree(os.path.join(ROOT, DATASET), ignore_errors=True)
    for i in range(1, NUM_TRAIN + 1):
        west, north = -43.7 + i * 0.001, -22.9
        base = os.path.join(ROOT, DATASET, 'train')
        write_chip(
            os.path.join(base, '3band', f'3band_AOI_1_RIO_img{i}.tif'), west, north, i
        )
        write_building(
            os.path.join(base, 'geojson', f'Geo_AOI_1_RIO_img{i}.geojson'), west, north
        )
    for i in range(1, NUM_TEST + 1):
        west, north = -43.6 + i * 0.001, -22.9
        path = os.path.join(
            ROOT, DATASET, 'test', '3band', f'3band_AOI_1_RIO_img{i}.tif'
        )
        write_chip(path, west, north, 100 + i)


if __name__ == '__main__':
    main()
