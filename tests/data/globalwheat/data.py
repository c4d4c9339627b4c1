#!/usr/bin/env python3

"""Write a tiny fake GlobalWheat-WILDS release in the real on-disk layout.

globalwheat_v1.1/{official_train.csv, official_val.csv, official_test.csv,
fixed_train_val.csv, fixed_train_test.csv, metadata_domain.csv, images/*.png} and
globalwheat_unlabeled_v1.0/{official_<split>_unlabeled.csv, images/*.png}.
Images are 32 x 40 px instead of 1024 x 1024. Every box is drawn as a filled
white rectangle on a black image, so tests can check that boxes and pixels agree
(also after augmentation).
"""

import hashlib
import os
import shutil

import numpy as np
import pandas as pd
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
HEIGHT, WIDTH = 32, 40

# Per split file: list of (domain, boxes) images.
LABELED = {
    'official_train.csv': [
        (0, [(2, 3, 10, 12), (20, 5, 30, 15)]),
        (0, []),
        (1, [(5, 20, 12, 30)]),
        (1, [(0, 0, 4, 4), (30, 22, 40, 32), (15, 10, 22, 18)]),
    ],
    'official_val.csv': [(2, [(8, 8, 16, 16)]), (2, [])],
    'official_test.csv': [(3, [(1, 1, 9, 9), (12, 2, 19, 11)])],
    'fixed_train_val.csv': [(0, [(3, 4, 13, 14)])],
    'fixed_train_test.csv': [(1, [(25, 3, 35, 13)])],
}
UNLABELED = {
    'official_train_unlabeled.csv': 2,
    'official_val_unlabeled.csv': 1,
    'official_test_unlabeled.csv': 1,
    'official_extra_unlabeled.csv': 1,
}


def image_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40] + '.png'


def write_image(path: str, boxes: list[tuple[int, int, int, int]]) -> None:
    array = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        array[y1:y2, x1:x2] = 255
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def main() -> None:
    labeled = os.path.join(ROOT, 'globalwheat_v1.1')
    shutil.rmtree(labeled, ignore_errors=True)
    for filename, images in LABELED.items():
        rows = []
        for i, (domain, boxes) in enumerate(images):
            name = image_name(f'{filename}-{i}')
            text = ';'.join(' '.join(str(v) for v in box) for box in boxes)
            rows.append(
                {'image_name': name, 'BoxesString': text or 'no_box', 'domain': domain}
            )
            write_image(os.path.join(labeled, 'images', name), boxes)
        pd.DataFrame(rows).to_csv(os.path.join(labeled, filename), index=False)
    domains = pd.DataFrame(
        {
            'name': ['Arvalis_1', 'Arvalis_2', 'ETHZ_1', 'Inrae_1'],
            'country': ['France', 'France', 'Switzerland', 'France'],
            'location': ['Gréoux', 'Gréoux', 'Eschikon', 'Toulouse'],
            'development_stage': [
                'Post-flowering',
                'Filling',
                'Filling',
                'Filling-Ripening',
            ],
        }
    )
    domains.to_csv(os.path.join(labeled, 'metadata_domain.csv'), sep=';', index=False)

    unlabeled = os.path.join(ROOT, 'globalwheat_unlabeled_v1.0')
    shutil.rmtree(unlabeled, ignore_errors=True)
    for filename, count in UNLABELED.items():
        rows = []
        for i in range(count):
            name = image_name(f'{filename}-{i}')
            rows.append({'image_name': name, 'domain': 47 + i})
            write_image(os.path.join(unlabeled, 'images', name), [(i, i, i + 5, i + 5)])
        pd.DataFrame(rows).to_csv(os.path.join(unlabeled, filename), index=False)


if __name__ == '__main__':
    main()
