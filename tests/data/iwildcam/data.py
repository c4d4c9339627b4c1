#!/usr/bin/env python3

"""Write a tiny fake iWildCam2020-WILDS release in the real on-disk layout.

iwildcam_v2.0/{metadata.csv, categories.csv, train/<uuid>.jpg} and
iwildcam_unlabeled_v1.0/{metadata.csv, images/<uid>.jpg}. Every image is a solid
colour whose red value encodes its label (``40 * y + 20``) and whose green value
encodes its row, so tests can check that a label travels with its own image.
"""

import os
import shutil
import uuid

import numpy as np
import pandas as pd
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
SPLITS = {'train': 4, 'val': 2, 'test': 2, 'id_val': 2, 'id_test': 2}
NUM_CLASSES = 4
SIZES = [(24, 32), (32, 24), (28, 28)]


def write_image(path: str, red: int, green: int, size: tuple[int, int]) -> None:
    height, width = size
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = red
    array[..., 1] = green
    array[..., 2] = 128
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def main() -> None:
    rng = np.random.default_rng(0)
    namespace = uuid.UUID(int=0)

    labeled = os.path.join(ROOT, 'iwildcam_v2.0')
    shutil.rmtree(labeled, ignore_errors=True)
    rows: list[dict[str, object]] = []
    for split, count in SPLITS.items():
        for _ in range(count):
            i = len(rows)
            y = i % NUM_CLASSES
            filename = f'{uuid.uuid5(namespace, f"labeled-{i}")}.jpg'
            rows.append(
                {
                    'split': split,
                    'location_remapped': int(rng.integers(0, 3)),
                    'location': int(rng.integers(0, 300)),
                    'sequence_remapped': i,
                    'sequence': str(uuid.uuid5(namespace, f'seq-{i}')),
                    'datetime': f'2013-0{1 + i % 9}-1{i % 10} 10:2{i % 10}:00.000',
                    'filename': filename,
                    'y': y,
                    'category_id': [0, 2, 3, 7][y],
                    'image_id': filename.removesuffix('.jpg'),
                }
            )
            write_image(
                os.path.join(labeled, 'train', filename),
                40 * y + 20,
                10 * i,
                SIZES[i % len(SIZES)],
            )
    # The real file starts with an unnamed index column.
    pd.DataFrame(rows).to_csv(os.path.join(labeled, 'metadata.csv'))
    categories = pd.DataFrame(
        {
            'y': [0, 1, 2, 3, None],
            'category_id': [0, 2, 3, 7, 9],
            'name': [
                'empty',
                'tayassu pecari',
                'dasyprocta punctata',
                'cuniculus paca',
                'puma concolor',
            ],
        }
    )
    categories['y'] = categories['y'].astype('Int64')
    categories.to_csv(os.path.join(labeled, 'categories.csv'), index=False)

    unlabeled = os.path.join(ROOT, 'iwildcam_unlabeled_v1.0')
    shutil.rmtree(unlabeled, ignore_errors=True)
    rows = []
    for i in range(3):
        uid = str(uuid.uuid5(namespace, f'unlabeled-{i}'))
        rows.append(
            {
                'uid': uid,
                'location_remapped': i,
                'sequence_remapped': i,
                'datetime': f'2014-02-0{i + 1} 08:00:00.000',
                'y': -1,
                'category_id': -1,
            }
        )
        write_image(
            os.path.join(unlabeled, 'images', f'{uid}.jpg'), 0, 10 * i, (20, 30)
        )
    pd.DataFrame(rows).to_csv(os.path.join(unlabeled, 'metadata.csv'))


if __name__ == '__main__':
    main()
