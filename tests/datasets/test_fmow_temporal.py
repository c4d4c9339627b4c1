import json
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader
from torchgeo.datasets import DatasetNotFoundError

from explora_geo.datasets.fmow import FMoW, FMoWTemporal
from explora_geo.datasets.fmow_metadata import FMoWSampleError, parse_timestamp
from explora_geo.datasets.fmow_sentinel import FMoWSentinel

RGB = os.path.join('tests', 'data', 'fmow')
SENTINEL = os.path.join('tests', 'data', 'fmow_sentinel')


def json_timestamp(image_path: str) -> list[int]:
    with open(image_path[: -len('.jpg')] + '.json') as f:
        return list(parse_timestamp(json.load(f)['timestamp'], image_path))


class TestFMoWTemporalRGB:
    def test_sample(self) -> None:
        ds = FMoWTemporal(RGB, 'train', size=16)
        single = FMoW(RGB, 'train', size=16)
        assert len(ds) == 7
        sample = ds[0]
        assert sample['image'].shape == (3, 3, 16, 16)
        assert sample['image'].dtype == torch.float32
        assert sample['timestamps'].shape == (3, 3)
        assert sample['timestamps'].dtype == torch.int64
        assert sample['label'].item() == 0
        # The anchor comes first.
        assert torch.equal(sample['image'][0], single[0]['image'])
        assert sample['timestamps'][0].tolist() == [2016, 5, 15]

    def test_companions_share_location_and_match_timestamps(self) -> None:
        ds = FMoWTemporal(RGB, 'train', size=16, random_companions=False)
        for index in range(len(ds)):
            chosen = [index, *ds.companions(index)]
            assert len(chosen) == 3
            assert all(ds.locations[j] == ds.locations[index] for j in chosen)
            expected = [json_timestamp(str(ds.files[j])) for j in chosen]
            assert ds[index]['timestamps'].tolist() == expected

    def test_random_at_train_time(self) -> None:
        ds = FMoWTemporal(RGB, 'train', size=16)
        assert ds.random_companions
        torch.manual_seed(0)
        draws = {tuple(ds.companions(0)) for _ in range(30)}
        # Location airport_0 has three other images: 6 ordered pairs are possible.
        assert len(draws) > 3
        assert all(len(set(d)) == 2 and set(d) <= {1, 2, 3} for d in draws)

    def test_deterministic_for_evaluation(self) -> None:
        ds = FMoWTemporal(RGB, 'train', size=16, random_companions=False)
        first = [ds.companions(i) for i in range(len(ds))]
        torch.manual_seed(123)
        assert [ds.companions(i) for i in range(len(ds))] == first
        assert torch.equal(ds[0]['image'], ds[0]['image'])
        other_seed = FMoWTemporal(
            RGB, 'train', size=16, random_companions=False, seed=1
        )
        assert [other_seed.companions(i) for i in range(4)] != first[:4]
        assert not FMoWTemporal(RGB, 'val', size=16).random_companions

    def test_few_images_repeat(self) -> None:
        ds = FMoWTemporal(RGB, 'train', size=16)
        assert ds.companions(4) == [4, 4]  # airport_1 has one image
        assert ds.companions(5) == [6, 6]  # zoo_3 has two
        sample = ds[4]
        assert torch.equal(sample['image'][0], sample['image'][2])
        four = FMoWTemporal(RGB, 'train', num_images=5, size=16)
        chosen = four.companions(0)
        assert sorted(set(chosen)) == [1, 2, 3] and len(chosen) == 4
        assert FMoWTemporal(RGB, 'train', num_images=1, size=16)[0]['image'].shape == (
            1,
            3,
            16,
            16,
        )

    def test_collate_and_plot(self) -> None:
        ds = FMoWTemporal(RGB, 'train', size=16)
        batch = next(iter(DataLoader(ds, batch_size=4)))
        assert batch['image'].shape == (4, 3, 3, 16, 16)
        assert batch['timestamps'].shape == (4, 3, 3)
        fig = ds.plot(ds[0], suptitle='Test')
        assert len(fig.axes) == 3
        assert fig.axes[0].get_title() == '2016-05 15h'
        plt.close(fig)

    def test_sizes_must_match(self) -> None:
        ds = FMoWTemporal(RGB, 'train')
        with pytest.raises(
            FMoWSampleError,
            match=r"location 'airport/airport_0' differ in shape .* pass size=",
        ):
            ds[0]

    def test_csv_needs_timestamps(self, tmp_path: Path) -> None:
        root = tmp_path / 'fmow'
        shutil.copytree(RGB, root)
        assert FMoWTemporal(root, 'train', layout='satmae', size=16)[1][
            'timestamps'
        ].shape == (3, 3)
        table = pd.read_csv(root / 'train_62classes.csv')
        table.drop(columns='timestamp').to_csv(
            root / 'train_62classes.csv', index=False
        )
        with pytest.raises(
            FMoWSampleError,
            match=r"train_62classes.csv: missing column 'timestamp', which FMoWTemporal needs",
        ):
            FMoWTemporal(root, 'train', layout='satmae', size=16)

    def test_skip_bad_companion(self, tmp_path: Path) -> None:
        root = tmp_path / 'fmow'
        shutil.copytree(RGB, root)
        (root / 'train/zoo/zoo_3/zoo_3_1_rgb.jpg').write_bytes(b'')
        ds = FMoWTemporal(root, 'train', size=16, on_error='skip')
        with pytest.warns(UserWarning) as record:
            sample = ds[5]
        # Anchor 5 needs its companion 6, anchor 6 is the bad image itself; the
        # sample of anchor 0 (the next readable one) is returned.
        assert len(record) == 2
        assert all('zoo_3_1_rgb.jpg: cannot decode' in str(w.message) for w in record)
        assert sorted(ds.skipped) == [5, 6]
        assert sample['label'].item() == 0
        assert sample['timestamps'][0].tolist() == [2016, 5, 15]

    def test_not_found(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError):
            FMoWTemporal(tmp_path)
        with pytest.raises(DatasetNotFoundError):
            FMoWTemporal(tmp_path, sensor='sentinel')

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match='num_images=0 is invalid'):
            FMoWTemporal(RGB, num_images=0)
        with pytest.raises(ValueError, match="sensor='sar' is invalid"):
            FMoWTemporal(RGB, sensor='sar')  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match="bands and normalization apply to sensor='sentinel' only"
        ):
            FMoWTemporal(RGB, bands=('B2',))
        with pytest.raises(ValueError, match="layout applies to sensor='rgb' only"):
            FMoWTemporal(SENTINEL, sensor='sentinel', layout='satmae')


class TestFMoWTemporalSentinel:
    def test_sample(self) -> None:
        ds = FMoWTemporal(
            SENTINEL,
            'train',
            sensor='sentinel',
            size=8,
            normalization='satmae',
            random_companions=False,
        )
        single = FMoWSentinel(SENTINEL, 'train', size=8, normalization='satmae')
        sample = ds[0]
        assert sample['image'].shape == (3, 10, 8, 8)
        chosen = [0, *ds.companions(0)]
        assert sorted(chosen) == [0, 1, 2]
        for t, j in enumerate(chosen):
            assert torch.equal(sample['image'][t], single[j]['image'])
            assert sample['timestamps'][t].tolist() == single.timestamps[j].tolist()
        assert sample['image'].min() >= 0 and sample['image'].max() <= 1

    def test_bands(self) -> None:
        ds = FMoWTemporal(
            SENTINEL, 'val', sensor='sentinel', bands=('B4', 'B3', 'B2'), size=8
        )
        assert ds[0]['image'].shape == (3, 3, 8, 8)
        fig = ds.plot(ds[1])
        assert len(fig.axes) == 3
        plt.close(fig)
