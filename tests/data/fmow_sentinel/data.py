#!/usr/bin/env python3

"""Write a tiny fake fMoW-Sentinel in the release layout.

train.csv, val.csv, test_gt.csv (category, location_id, image_id, timestamp, polygon)
fmow-sentinel/<split>/<category>/<category>_<location_id>/<category>_<location_id>_<image_id>.tif

Each image is a 13-band uint16 GeoTIFF (EPSG:4326) whose size varies, with values
drawn around the fMoW-Sentinel band means.
"""

import csv
import os
import shutil

import numpy as np
import rasterio
from rasterio.transform import from_origin

from explora_geo.sensors import SENTINEL2

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN = [round(m) for m in SENTINEL2.mean]
STD = [633, 650, 712, 965, 949, 1108, 1258, 1233, 1364, 472, 14, 1310, 1088]

# split directory -> [(category, location_id, [(image_id, width, height, timestamp)])]
LAYOUT = {
    'train': [
        (
            'airport',
            0,
            [
                (0, 14, 12, '2016-05-03T15:42:10Z'),
                (1, 12, 12, '2017-01-21T00:00:00Z'),
                (100, 13, 15, '2018-07-01T00:00:00Z'),
            ],
        ),
        ('airport', 1, [(0, 12, 14, '2015-08-11T06:00:00Z')]),
        (
            'crop_field',
            2,
            [
                (0, 16, 13, '2017-06-21T00:00:00Z'),
                (101, 16, 13, '2019-10-01T00:00:00Z'),
            ],
        ),
    ],
    'val': [
        (
            'zoo',
            3,
            [(0, 12, 12, '2016-09-09T17:00:00Z'), (1, 15, 12, '2018-04-01T00:00:00Z')],
        )
    ],
    'test_gt': [('dam', 4, [(0, 13, 13, '2015-02-14T13:00:00Z')])],
}
CSV_NAMES = {'train': 'train.csv', 'val': 'val.csv', 'test_gt': 'test_gt.csv'}


def polygon(lon: float, lat: float) -> str:
    d = 0.001
    corners = [
        (lon, lat),
        (lon + d, lat),
        (lon + d, lat - d),
        (lon, lat - d),
        (lon, lat),
    ]
    return 'POLYGON ((' + ', '.join(f'{x:.6f} {y:.6f}' for x, y in corners) + '))'


def main() -> None:
    rng = np.random.default_rng(0)
    shutil.rmtree(os.path.join(HERE, 'fmow-sentinel'), ignore_errors=True)
    for split_dir, locations in LAYOUT.items():
        rows = []
        for category, location_id, images in locations:
            loc_name = f'{category}_{location_id}'
            loc_dir = os.path.join(HERE, 'fmow-sentinel', split_dir, category, loc_name)
            os.makedirs(loc_dir)
            lon, lat = -75.0 + location_id, 37.0 + location_id
            for image_id, width, height, timestamp in images:
                noise = rng.normal(size=(13, height, width))
                data = np.clip(
                    np.array(MEAN)[:, None, None]
                    + np.array(STD)[:, None, None] * noise,
                    1,
                    10000,
                ).astype(np.uint16)
                profile = {
                    'driver': 'GTiff',
                    'width': width,
                    'height': height,
                    'count': 13,
                    'dtype': 'uint16',
                    'crs': 'EPSG:4326',
                    'transform': from_origin(lon, lat, 1e-4, 1e-4),
                }
                path = os.path.join(loc_dir, f'{loc_name}_{image_id}.tif')
                with rasterio.open(path, 'w', **profile) as dst:
                    dst.write(data)
                rows.append(
                    (category, location_id, image_id, timestamp, polygon(lon, lat))
                )
        with open(os.path.join(HERE, CSV_NAMES[split_dir]), 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(
                ['category', 'location_id', 'image_id', 'timestamp', 'polygon']
            )
            writer.writerows(rows)


if __name__ == '__main__':
    main()
