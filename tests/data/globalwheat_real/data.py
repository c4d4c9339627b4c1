#!/usr/bin/env python3

"""Build a GlobalWheat-layout detection fixture from real NEON tree-crown imagery.

Source: ``OSBS_029.tif`` (400 x 400 px RGB orthophoto, 0.1 m, NEON site OSBS)
and its hand-drawn crown boxes (rows of ``testfile_deepforest.csv`` whose
``image_path`` is ``OSBS_029.png``), both shipped in the data folder of the
``deepforest`` package (MIT licence; imagery from the US National Ecological
Observatory Network). Usage::

    python data.py [SOURCE_DIR]

SOURCE_DIR defaults to the data folder of an installed ``deepforest``. The image
is averaged down 2 x to 200 x 200 px and cut into four 100 x 100 px tiles; a
box is kept in a tile when at least half of its area lies inside it, and is
clipped to the tile. Tiles 0 and 1 form ``official_train.csv``, tile 2
``official_val.csv`` and tile 3 ``official_test.csv`` of
``globalwheat_v1.1/``, with the images in ``globalwheat_v1.1/images/``.
"""

import os
import shutil
import sys

import numpy as np
import pandas as pd
import rasterio
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
FACTOR = 2
TILE = 100
SPLIT_FILES = [
    'official_train.csv',
    'official_train.csv',
    'official_val.csv',
    'official_test.csv',
]


def source_dir() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    from importlib.resources import files

    return str(files('deepforest') / 'data')


def main() -> None:
    source = source_dir()
    with rasterio.open(os.path.join(source, 'OSBS_029.tif')) as src:
        image = src.read().transpose(1, 2, 0).astype(np.float64)
    height, width, _ = image.shape
    small = image.reshape(height // FACTOR, FACTOR, width // FACTOR, FACTOR, 3).mean(
        axis=(1, 3)
    )
    small = np.round(small).astype(np.uint8)

    table = pd.read_csv(os.path.join(source, 'testfile_deepforest.csv'))
    table = table[table['image_path'] == 'OSBS_029.png']
    boxes = table[['xmin', 'ymin', 'xmax', 'ymax']].to_numpy(dtype=np.float64) / FACTOR

    out = os.path.join(ROOT, 'globalwheat_v1.1')
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, 'images'))
    rows: dict[str, list[dict[str, object]]] = {name: [] for name in SPLIT_FILES}
    tiles = [
        (r, c)
        for r in range(small.shape[0] // TILE)
        for c in range(small.shape[1] // TILE)
    ]
    for index, (r, c) in enumerate(tiles):
        x0, y0 = c * TILE, r * TILE
        name = f'OSBS_029_tile{index}.png'
        Image.fromarray(small[y0 : y0 + TILE, x0 : x0 + TILE]).save(
            os.path.join(out, 'images', name), optimize=True
        )
        kept = []
        for x1, y1, x2, y2 in boxes:
            cx1, cy1 = max(x1 - x0, 0), max(y1 - y0, 0)
            cx2, cy2 = min(x2 - x0, TILE), min(y2 - y0, TILE)
            if cx2 <= cx1 or cy2 <= cy1:
                continue
            if (cx2 - cx1) * (cy2 - cy1) < 0.5 * (x2 - x1) * (y2 - y1):
                continue
            box = [round(cx1), round(cy1), round(cx2), round(cy2)]
            if box[2] > box[0] and box[3] > box[1]:
                kept.append(' '.join(str(v) for v in box))
        rows[SPLIT_FILES[index]].append(
            {'image_name': name, 'BoxesString': ';'.join(kept) or 'no_box', 'domain': 0}
        )
    for filename, split_rows in rows.items():
        pd.DataFrame(split_rows).to_csv(os.path.join(out, filename), index=False)


if __name__ == '__main__':
    main()
