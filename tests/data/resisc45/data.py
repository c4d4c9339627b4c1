#!/usr/bin/env python3

"""Write a tiny fake RESISC-45 in the layout torchgeo's ``RESISC45`` reads.

``NWPU-RESISC45/<class>/<class>_<n>.jpg`` (RGB JPEGs of 32 x 32 px, three of
the 45 classes) and ``resisc45-{train,val,test}.txt`` listing the file names of
each split. Each image is a flat colour that encodes its class, plus noise.
"""

import os
import shutil

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
SIZE = 32
CLASSES = ('airplane', 'beach', 'forest')
SPLITS = {'train': (1, 2, 3, 4), 'val': (5,), 'test': (6,)}


def main() -> None:
    directory = os.path.join(ROOT, 'NWPU-RESISC45')
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(0)
    for split, numbers in SPLITS.items():
        names = []
        for c, name in enumerate(CLASSES):
            os.makedirs(os.path.join(directory, name), exist_ok=True)
            for n in numbers:
                base = np.full((SIZE, SIZE, 3), 60 + 80 * c, dtype=np.int16)
                noise = rng.integers(-20, 20, size=base.shape)
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                filename = f'{name}_{n:03d}.jpg'
                Image.fromarray(pixels).save(os.path.join(directory, name, filename))
                names.append(filename)
        with open(os.path.join(ROOT, f'resisc45-{split}.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')


if __name__ == '__main__':
    main()
