import json
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image
from torch.utils.data import DataLoader
from torchgeo.datasets import DatasetNotFoundError

from explora_geo.datasets.fmow import FMoW
from explora_geo.datasets.fmow_base import resize_and_center_crop
from explora_geo.datasets.fmow_metadata import (
    FMOW_CLASSES,
    FMoWSampleError,
    class_index,
    parse_timestamp,
)

ROOT = os.path.join('tests', 'data', 'fmow')


def copy_root(tmp_path: Path) -> Path:
    root = tmp_path / 'fmow'
    shutil.copytree(ROOT, root)
    return root


def test_class_list() -> None:
    assert len(FMOW_CLASSES) == 62
    assert len(set(FMOW_CLASSES)) == 62
    assert FMOW_CLASSES[:3] == ('airport', 'airport_hangar', 'airport_terminal')
    assert FMOW_CLASSES[11] == 'crop_field'
    assert FMOW_CLASSES[47] == 'single-unit_residential'
    assert FMOW_CLASSES[-1] == 'zoo'
    assert class_index('zoo', 'x') == 61
    assert class_index('61', 'x', allow_index=True) == 61
    with pytest.raises(FMoWSampleError, match=r"here: unknown fMoW class '61'"):
        class_index('61', 'here')
    with pytest.raises(FMoWSampleError, match=r"unknown fMoW class '62'"):
        class_index('62', 'x', allow_index=True)


def test_parse_timestamp() -> None:
    assert parse_timestamp('2017-06-21T00:00:00Z', 'x') == (2017, 6, 0)
    assert parse_timestamp('2016-05-03T15:42:10Z', 'x') == (2016, 5, 15)
    assert parse_timestamp('2016-05-03T23:30:00-02:00', 'x') == (2016, 5, 1)
    with pytest.raises(
        FMoWSampleError, match=r"row 3: cannot parse timestamp 'May 2016'"
    ):
        parse_timestamp('May 2016', 'row 3')


class TestFMoWRelease:
    def test_index(self) -> None:
        ds = FMoW(ROOT, 'train')
        assert len(ds) == 7
        assert ds.labels.tolist() == [0, 0, 0, 0, 0, 61, 61]
        assert len(set(ds.locations.tolist())) == 3
        assert len(FMoW(ROOT, 'val')) == 2
        test = FMoW(ROOT, 'test')
        assert len(test) == 1
        assert os.path.join('test_gt', 'dam') in str(test.files[0])

    def test_iteration_ends(self) -> None:
        ds = FMoW(ROOT, 'val')
        samples = list(iter(ds))  # stops at the IndexError of index len(ds)
        assert [int(s['label']) for s in samples] == ds.labels.tolist()
        assert torch.equal(ds[-1]['image'], samples[-1]['image'])
        with pytest.raises(IndexError, match='index 2 is out of range for FMoW of 2'):
            ds[2]

    def test_sample(self) -> None:
        ds = FMoW(ROOT, 'train')
        sample = ds[1]
        path = os.path.join(ROOT, 'train', 'airport', 'airport_0', 'airport_0_1_rgb')
        expected = np.asarray(Image.open(path + '.jpg'), dtype=np.float32)
        assert sample['image'].dtype == torch.float32
        assert torch.equal(sample['image'], torch.from_numpy(expected).permute(2, 0, 1))
        assert sample['label'].dtype == torch.int64
        assert sample['label'].item() == FMOW_CLASSES.index('airport')
        with open(path + '.json') as f:
            meta = json.load(f)
        assert sample['timestamp'].tolist() == [2017, 1, 16]
        x, y, w, h = meta['bounding_boxes'][0]['box']
        assert sample['bbox_xyxy'].tolist() == [[x, y, x + w, y + h]]

    def test_size(self) -> None:
        ds = FMoW(ROOT, 'train', size=16)
        sample = ds[0]  # 40 x 32 image, box [10, 6, 20, 16]
        assert sample['image'].shape == (3, 16, 16)
        # Shorter side 32 -> 16 (scale 0.5), width 20, centre crop offset 2.
        assert sample['bbox_xyxy'].tolist() == [[3.0, 3.0, 13.0, 11.0]]
        batch = next(iter(DataLoader(ds, batch_size=4)))
        assert batch['image'].shape == (4, 3, 16, 16)
        assert batch['timestamp'].shape == (4, 3)

    def test_size_matches_reference_resize(self) -> None:
        # Reading at a reduced size (JPEG draft decoding) approximates resizing the
        # full image.
        full = FMoW(ROOT, 'train')[0]['image']
        reference, _ = resize_and_center_crop(full, 16)
        small = FMoW(ROOT, 'train', size=16)[0]['image']
        assert (small - reference).abs().mean() < 4

    def test_plot(self) -> None:
        ds = FMoW(ROOT, 'train')
        sample = ds[0]
        sample['prediction'] = torch.tensor(61)
        fig = ds.plot(sample, suptitle='Test')
        assert 'Prediction: zoo' in fig.axes[0].get_title()
        (box,) = fig.axes[0].patches
        assert isinstance(box, Rectangle)
        assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (
            10,
            6,
            20,
            16,
        )
        plt.close(fig)

    def test_not_found(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match='Dataset not found') as info:
            FMoW(tmp_path, 'train')
        assert 'github.com/fMoW/dataset' in info.value.__notes__[0]

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match="split='training' is invalid"):
            FMoW(ROOT, 'training')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="layout='csv' is invalid"):
            FMoW(ROOT, layout='csv')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="on_error='ignore' is invalid"):
            FMoW(ROOT, on_error='ignore')  # type: ignore[arg-type]

    def test_unknown_class_directory(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        bad = root / 'train' / 'castle' / 'castle_9'
        bad.mkdir(parents=True)
        shutil.copy(
            root / 'train/zoo/zoo_3/zoo_3_0_rgb.jpg', bad / 'castle_9_0_rgb.jpg'
        )
        with pytest.raises(
            FMoWSampleError,
            match=r"castle \(category directory\): unknown fMoW class 'castle'",
        ):
            FMoW(root, 'train')
        with pytest.warns(
            UserWarning, match=r"skipped 1 of 3 entries; first: .*'castle'"
        ):
            ds = FMoW(root, 'train', on_error='skip')
        assert len(ds) == 7

    def test_truncated_jpeg(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'train/airport/airport_0/airport_0_0_rgb.jpg'
        path.write_bytes(path.read_bytes()[:300])
        ds = FMoW(root, 'train')
        with pytest.raises(
            FMoWSampleError, match=r'airport_0_0_rgb.jpg: cannot decode image'
        ):
            ds[0]

    def test_grayscale_jpeg(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'train/airport/airport_0/airport_0_0_rgb.jpg'
        Image.new('L', (20, 20), 7).save(path)
        with pytest.raises(
            FMoWSampleError,
            match=r"airport_0_0_rgb.jpg: expected a 3-band RGB image, found mode 'L' with 1 band",
        ):
            FMoW(root, 'train')[0]

    def test_missing_json(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        os.remove(root / 'train/zoo/zoo_3/zoo_3_1_rgb.json')
        with pytest.raises(
            FMoWSampleError, match=r'zoo_3_1_rgb.json: metadata file not found'
        ):
            FMoW(root, 'train')[6]

    def test_json_category_mismatch(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'train/zoo/zoo_3/zoo_3_0_rgb.json'
        meta = json.loads(path.read_text())
        meta['bounding_boxes'][0]['category'] = 'dam'
        path.write_text(json.dumps(meta))
        with pytest.raises(
            FMoWSampleError,
            match=r"zoo_3_0_rgb.json: no bounding box of category 'zoo' .* categories \['dam'\]",
        ):
            FMoW(root, 'train')[5]

    def test_json_bad_timestamp_and_box(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'train/zoo/zoo_3/zoo_3_0_rgb.json'
        meta = json.loads(path.read_text())
        del meta['timestamp']
        path.write_text(json.dumps(meta))
        with pytest.raises(
            FMoWSampleError, match=r"zoo_3_0_rgb.json: missing key 'timestamp'"
        ):
            FMoW(root, 'train')[5]
        meta['timestamp'] = '2016-05-03T15:42:10Z'
        meta['bounding_boxes'][0]['box'] = [1, 2, 0, 4]
        path.write_text(json.dumps(meta))
        with pytest.raises(FMoWSampleError, match=r'invalid box \[1, 2, 0, 4\]'):
            FMoW(root, 'train')[5]
        path.write_text('{"timestamp": ')
        with pytest.raises(FMoWSampleError, match=r'zoo_3_0_rgb.json: invalid JSON'):
            FMoW(root, 'train')[5]

    def test_skip_bad_file(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'train/airport/airport_0/airport_0_2_rgb.jpg'
        path.write_bytes(b'not a jpeg')
        ds = FMoW(root, 'train', on_error='skip')
        expected = ds._load_sample(3)
        with pytest.warns(
            UserWarning,
            match=r'skipped sample 2: .*airport_0_2_rgb.jpg: cannot decode image .*\(1 skipped so far',
        ):
            sample = ds[2]
        assert torch.equal(sample['image'], expected['image'])
        assert ds.skipped.keys() == {2}
        # A known bad index is not read again and warns no more.
        assert torch.equal(ds[2]['image'], expected['image'])

    def test_all_bad(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        (root / 'test_gt/dam/dam_7/dam_7_0_rgb.jpg').write_bytes(b'')
        ds = FMoW(root, 'test', on_error='skip')
        with (
            pytest.warns(UserWarning, match='cannot decode image'),
            pytest.raises(FMoWSampleError, match='none of the 1 samples could be read'),
        ):
            ds[0]


class TestFMoWSatMAE:
    def test_matches_release(self) -> None:
        csv_ds = FMoW(ROOT, 'train', layout='satmae')
        release = FMoW(ROOT, 'train')
        assert len(csv_ds) == len(release) == 7
        assert csv_ds.labels.tolist() == release.labels.tolist()
        for i in (0, 6):
            a, b = csv_ds[i], release[i]
            assert torch.equal(a['image'], b['image'])
            assert torch.equal(a['timestamp'], b['timestamp'])
            assert 'bbox_xyxy' not in a
        assert len(np.unique(csv_ds.locations)) == 3

    def test_names_without_timestamp(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        table = pd.read_csv(root / 'val_62classes.csv')
        table['category'] = 'crop_field'
        table.drop(columns='timestamp').to_csv(root / 'val_62classes.csv', index=False)
        ds = FMoW(root, 'val', layout='satmae')
        sample = ds[1]
        assert sample['label'].item() == 11
        assert 'timestamp' not in sample

    def test_missing_column(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        table = pd.read_csv(root / 'train_62classes.csv')
        table.drop(columns='image_path').to_csv(
            root / 'train_62classes.csv', index=False
        )
        with pytest.raises(
            FMoWSampleError,
            match=r"train_62classes.csv: missing required column\(s\) \['image_path'\]",
        ):
            FMoW(root, 'train', layout='satmae')

    def test_unknown_class(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        table = pd.read_csv(root / 'train_62classes.csv', dtype=str)
        table.loc[2, 'category'] = 'castle'
        table.loc[4, 'category'] = '99'
        table.to_csv(root / 'train_62classes.csv', index=False)
        with pytest.raises(
            FMoWSampleError,
            match=r"train_62classes.csv line 4: unknown fMoW class 'castle'.* \(and 1 more\)",
        ):
            FMoW(root, 'train', layout='satmae')
        with pytest.warns(UserWarning, match='skipped 2 of 7 entries'):
            ds = FMoW(root, 'train', layout='satmae', on_error='skip')
        assert len(ds) == 5
        assert ds.labels.tolist() == [0, 0, 0, 61, 61]

    def test_missing_file(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        os.remove(root / 'train/zoo/zoo_3/zoo_3_0_rgb.jpg')
        ds = FMoW(root, 'train', layout='satmae')
        with pytest.raises(
            FMoWSampleError,
            match=r'zoo_3_0_rgb.jpg \(listed in .*train_62classes.csv line 7\): file not found',
        ):
            ds[5]
