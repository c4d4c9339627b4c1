#!/usr/bin/env python3

"""Write a tiny fake fMoW-RGB in the official release layout plus SatMAE CSVs.

<split>/<category>/<category>_<location>/<category>_<location>_<image>_rgb.jpg
<split>/<category>/<category>_<location>/<category>_<location>_<image>_rgb.json
{train,val,test}_62classes.csv   (category = integer label, image_path, timestamp)

The labelled test split lives in ``test_gt`` as in the release.
"""

import csv
import json
import os
import shutil

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = {'airport': 0, 'crop_field': 11, 'dam': 12, 'zoo': 61}

# split directory -> [(category, location, [(width, height, timestamp), ...])]
LAYOUT = {
    'train': [
        (
            'airport',
            0,
            [
                (40, 32, '2016-05-03T15:42:10Z'),
                (36, 44, '2017-01-21T16:02:55Z'),
                (48, 30, '2015-08-11T15:20:00Z'),
                (32, 32, '2012-03-30T14:01:41Z'),
            ],
        ),
        ('airport', 1, [(30, 34, '2014-07-04T11:11:11Z')]),
        (
            'zoo',
            3,
            [(44, 40, '2011-10-02T09:30:00Z'), (38, 36, '2013-06-15T10:45:12Z')],
        ),
    ],
    'val': [
        (
            'crop_field',
            5,
            [(34, 38, '2016-09-09T17:00:00Z'), (40, 40, '2010-12-24T08:15:00Z')],
        )
    ],
    'test_gt': [('dam', 7, [(36, 30, '2015-02-14T13:13:13Z')])],
}
CSV_NAMES = {'train': 'train', 'val': 'val', 'test_gt': 'test'}


def main() -> None:
    rng = np.random.default_rng(0)
    for split_dir, locations in LAYOUT.items():
        shutil.rmtree(os.path.join(HERE, split_dir), ignore_errors=True)
        rows = []
        for category, location, images in locations:
            loc_name = f'{category}_{location}'
            loc_dir = os.path.join(HERE, split_dir, category, loc_name)
            os.makedirs(loc_dir)
            for image_id, (width, height, timestamp) in enumerate(images):
                stem = f'{loc_name}_{image_id}_rgb'
                # Smooth content (coarse random colours, upsampled) like real imagery.
                coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize(
                    (width, height), Image.Resampling.BICUBIC
                )
                image.save(os.path.join(loc_dir, stem + '.jpg'), quality=95)
                box = [width // 4, height // 5, width // 2, height // 2]
                meta = {
                    'gsd': 0.5,
                    'img_width': width,
                    'img_height': height,
                    'country_code': 'USA',
                    'cloud_cover': 0,
                    'timestamp': timestamp,
                    'bounding_boxes': [{'category': category, 'box': box, 'ID': 1}],
                }
                with open(os.path.join(loc_dir, stem + '.json'), 'w') as f:
                    json.dump(meta, f, indent=1)
                path = f'{split_dir}/{category}/{loc_name}/{stem}.jpg'
                rows.append((CLASSES[category], path, timestamp))
        csv_path = os.path.join(HERE, f'{CSV_NAMES[split_dir]}_62classes.csv')
        with open(csv_path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['category', 'image_path', 'timestamp'])
            writer.writerows(rows)


if __name__ == '__main__':
    main()
