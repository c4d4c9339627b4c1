#!/usr/bin/env python3

"""Write four real Sentinel-2 chips as a tiny fMoW-Sentinel (train split).

The chips are 48 x 48 px windows of ``explora_geo/assets/s2_virginia_13band.tif``
(itself derived from a real Sentinel-2 L1C scene by
``tests/data/s2_demo/make_asset.py``), written unchanged as 13-band uint16
GeoTIFFs in the fMoW-Sentinel layout, with a ``train.csv`` whose polygons are the
chips' real lon/lat bounds. The acquisition date of the scene is not
recorded in its source, so every timestamp is the placeholder
1970-01-01T00:00:00Z.
"""

import csv
import os
import shutil

import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
ASSET = os.path.join(REPO, 'explora_geo', 'assets', 's2_virginia_13band.tif')
SIZE = 48
TIMESTAMP = '1970-01-01T00:00:00Z'

# (category, location_id, column offset, row offset) in the asset
CHIPS = [
    ('crop_field', 0, 230, 10),
    ('crop_field', 1, 10, 40),
    ('single-unit_residential', 2, 60, 280),
    ('lake_or_pond', 3, 380, 40),
]


def main() -> None:
    shutil.rmtree(os.path.join(HERE, 'fmow-sentinel'), ignore_errors=True)
    rows = []
    with rasterio.open(ASSET) as src:
        for category, location_id, col, row in CHIPS:
            window = Window(col, row, SIZE, SIZE)
            data = src.read(window=window)
            profile = src.profile | {
                'width': SIZE,
                'height': SIZE,
                'transform': src.window_transform(window),
                'tiled': False,
                'compress': 'deflate',
                'predictor': 2,
            }
            profile.pop('blockxsize', None)
            profile.pop('blockysize', None)
            loc_name = f'{category}_{location_id}'
            loc_dir = os.path.join(HERE, 'fmow-sentinel', 'train', category, loc_name)
            os.makedirs(loc_dir)
            with rasterio.open(
                os.path.join(loc_dir, f'{loc_name}_0.tif'), 'w', **profile
            ) as dst:
                dst.write(data)
                dst.descriptions = src.descriptions
            west, south, east, north = transform_bounds(
                src.crs, 'EPSG:4326', *rasterio.windows.bounds(window, src.transform)
            )
            ring = [
                (west, north),
                (east, north),
                (east, south),
                (west, south),
                (west, north),
            ]
            poly = 'POLYGON ((' + ', '.join(f'{x:.6f} {y:.6f}' for x, y in ring) + '))'
            rows.append((category, location_id, 0, TIMESTAMP, poly))
    with open(os.path.join(HERE, 'train.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['category', 'location_id', 'image_id', 'timestamp', 'polygon'])
        writer.writerows(rows)


if __name__ == '__main__':
    main()
