#!/usr/bin/env python3

"""Write a tiny fake EuroSAT (13-band release) in torchgeo's layout.

ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<class>/<class>_<i>.tif:
13-band uint16 GeoTIFFs of 8 x 8 px (band order of torchgeo's EuroSAT), two
classes of the ten, and eurosat-{train,val,test}.txt naming the files with a
``.jpg`` suffix as the release does. Band values are random digital numbers
in the range of Sentinel-2 L1C.
"""

import os
import shutil

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(
    'ds', 'images', 'remote_sensing', 'otherDatasets', 'sentinel_2', 'tif'
)
CLASSES = ('AnnualCrop', 'Forest')
SPLITS = ('train', 'train', 'val', 'test')
SIZE = 8


def main() -> None:
    for name in ('ds', 'eurosat-train.txt', 'eurosat-val.txt', 'eurosat-test.txt'):
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    rng = np.random.default_rng(0)
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(CLASSES):
        folder = os.path.join(ROOT, BASE, cls)
        os.makedirs(folder)
        for i, split in enumerate(SPLITS):
            stem = f'{cls}_{i + 1}'
            data = rng.integers(0, 4000, size=(13, SIZE, SIZE)).astype(np.uint16)
            profile = {
                'driver': 'GTiff',
                'width': SIZE,
                'height': SIZE,
                'count': 13,
                'dtype': 'uint16',
                'crs': 'EPSG:32631',
                'transform': from_origin(500000, 5000000 + 80 * c, 10, 10),
            }
            with rasterio.open(
                os.path.join(folder, f'{stem}.tif'), 'w', **profile
            ) as dst:
                dst.write(data)
            names[split].append(f'{stem}.jpg')
    for split, files in names.items():
        with open(os.path.join(ROOT, f'eurosat-{split}.txt'), 'w') as f:
            f.write('\n'.join(files) + '\n')


if __name__ == '__main__':
    main()
