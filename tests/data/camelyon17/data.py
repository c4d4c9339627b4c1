#!/usr/bin/env python3

"""Write a tiny fake Camelyon17-WILDS release in the real on-disk layout.

camelyon17_v1.0/{metadata.csv, patches/patient_<p>_node_<n>/patch_...png} and
camelyon17_unlabeled_v1.0/ (same layout). Patches are 16 x 16 px instead of
96 x 96 to keep the files tiny. The red value of a patch encodes its label
(``100 * tumor + 50``), the green value its row.
"""

import os
import shutil

import numpy as np
import pandas as pd
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
SIZE = 16

# (patient, node, center, split, tumor): hospitals 0, 3, 4 are train/id_val,
# hospital 1 the OOD validation split and hospital 2 the test split.
LABELED = [
    ('004', 4, 0, 0, 0),
    ('004', 4, 0, 0, 1),
    ('015', 1, 0, 1, 1),
    ('020', 2, 1, 0, 0),
    ('020', 2, 1, 0, 1),
    ('042', 3, 2, 0, 1),
    ('042', 3, 2, 0, 0),
    ('068', 1, 3, 0, 1),
    ('068', 1, 3, 1, 0),
    ('099', 0, 4, 0, 0),
]
UNLABELED = [('001', 0, 0), ('030', 1, 1), ('050', 2, 2), ('080', 3, 3), ('090', 4, 4)]


def write_patch(
    data_dir: str, patient: str, node: int, x: int, y: int, red: int, green: int
) -> None:
    folder = os.path.join(data_dir, 'patches', f'patient_{patient}_node_{node}')
    os.makedirs(folder, exist_ok=True)
    array = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    array[..., 0] = red
    array[..., 1] = green
    array[..., 3] = 255  # the real patches are RGBA PNGs
    name = f'patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png'
    Image.fromarray(array).save(os.path.join(folder, name))


def main() -> None:
    labeled = os.path.join(ROOT, 'camelyon17_v1.0')
    shutil.rmtree(labeled, ignore_errors=True)
    rows = []
    for i, (patient, node, center, split, tumor) in enumerate(LABELED):
        x, y = 3200 + 96 * i, 12000 + 32 * i
        rows.append(
            {
                'patient': patient,
                'node': node,
                'x_coord': x,
                'y_coord': y,
                'tumor': tumor,
                'slide': int(patient) // 2,
                'center': center,
                'split': split,
            }
        )
        write_patch(labeled, patient, node, x, y, 100 * tumor + 50, 20 * i)
    pd.DataFrame(rows).to_csv(os.path.join(labeled, 'metadata.csv'))

    unlabeled = os.path.join(ROOT, 'camelyon17_unlabeled_v1.0')
    shutil.rmtree(unlabeled, ignore_errors=True)
    rows = []
    for i, (patient, node, center) in enumerate(UNLABELED):
        x, y = 800 + 96 * i, 640
        rows.append(
            {
                'patient': patient,
                'node': node,
                'x_coord': x,
                'y_coord': y,
                'tumor': -1,
                'slide': 50 + i,
                'center': center,
                'split': 10,
            }
        )
        write_patch(unlabeled, patient, node, x, y, 0, 20 * i)
    pd.DataFrame(rows).to_csv(os.path.join(unlabeled, 'metadata.csv'))


if __name__ == '__main__':
    main()
