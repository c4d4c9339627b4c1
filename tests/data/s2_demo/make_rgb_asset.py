#!/usr/bin/env python3
"""Derive the demo's natural-colour source imagery from the NEON aerial images.

Writes ``explora_geo/assets/neon_rgb/*.jpg``: four real 0.1 m RGB orthophoto
crops (NEON sites OSBS, SOAP, YELL) that the demo pre-trains its small source
MAE on, standing in for the natural-image pre-training of DinoV2/MAE.

Usage: ``python tests/data/s2_demo/make_rgb_asset.py SRC_DIR`` where SRC_DIR
holds the images of the PyPI ``deepforest`` 2.1.0 wheel's data folder.
"""

import sys
from pathlib import Path

from PIL import Image

FILES = {
    'OSBS_029.tif': 'osbs_029.jpg',
    'SOAP_031.png': 'soap_031.jpg',
    'SOAP_061.png': 'soap_061.jpg',
    '2019_YELL_2_541000_4977000_image_crop.png': 'yell_2019.jpg',
}


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name, out in FILES.items():
        image = Image.open(src / name).convert('RGB')
        if max(image.size) > 640:
            image = image.resize(
                (image.width // 2, image.height // 2), Image.Resampling.LANCZOS
            )
        image.save(dst / out, quality=88, optimize=True)


if __name__ == '__main__':
    root = Path(__file__).resolve().parents[3]
    main(Path(sys.argv[1]), root / 'explora_geo' / 'assets' / 'neon_rgb')
