#!/usr/bin/env python3

"""Write a tiny fake NAIP land-cover dataset in explora_geo's documented layout.

classes.csv (label,name; 66 classes), {train,val,test}.csv (path,label) and
4-band (R, G, B, NIR) uint8 GeoTIFF chips of 16 x 16 px under chips/<split>/.
The red band of a chip holds its label (``3 * label + 10``), the NIR band its
row. One row of train.csv gives its class by name instead of by index.
"""

import os
import shutil

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import from_origin

ROOT = os.path.dirname(os.path.abspath(__file__))
NUM_CLASSES = 66
SIZE = 16
SPLITS = {'train': [0, 5, 17, 65, 33, 5], 'val': [1, 40, 65], 'test': [2, 7]}


def write_chip(path: str, label: int, row: int) -> None:
    data = np.zeros((4, SIZE, SIZE), dtype=np.uint8)
    data[0] = 3 * label + 10
    data[1] = 100
    data[2] = 150
    data[3] = 20 * row
    os.makedirs(os.path.dirname(path), exist_ok=True)
    profile = {
        'driver': 'GTiff',
        'width': SIZE,
        'height': SIZE,
        'count': 4,
        'dtype': 'uint8',
        'crs': 'EPSG:26917',
        'transform': from_origin(404000.0 + 16 * row, 3285000.0, 1.0, 1.0),
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)


def main() -> None:
    for name in ['chips', 'classes.csv', *[f'{s}.csv' for s in SPLITS]]:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    names = [f'landcover_{i:02d}' for i in range(NUM_CLASSES)]
    pd.DataFrame({'label': range(NUM_CLASSES), 'name': names}).to_csv(
        os.path.join(ROOT, 'classes.csv'), index=False
    )
    for split, labels in SPLITS.items():
        rows = []
        for row, label in enumerate(labels):
            path = f'chips/{split}/m_3008101_ne_17_060_{row:03d}.tif'
            write_chip(os.path.join(ROOT, path), label, row)
            by_name = split == 'train' and row == 2
            rows.append({'path': path, 'label': names[label] if by_name else label})
        pd.DataFrame(rows).to_csv(os.path.join(ROOT, f'{split}.csv'), index=False)


if __name__ == '__main__':
    main()
