import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torchgeo.datasets import DatasetNotFoundError, RGBBandsMissingError

from explora_geo.datasets.image_table import InvalidSampleError
from explora_geo.datasets.naip_landcover import NAIPLandCover, NAIPLandCoverUnlabeled

DATA = Path(__file__).parents[1] / 'data' / 'naip_landcover'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_classes() -> None:
    ds = NAIPLandCover(DATA)
    table = pd.read_csv(DATA / 'classes.csv')
    assert ds.classes is not None
    assert len(ds.classes) == 66
    assert ds.classes == list(table.sort_values('label')['name'])


@pytest.mark.parametrize('split', NAIPLandCover.splits)
def test_labels_travel_with_chips(split: str) -> None:
    ds = NAIPLandCover(DATA, split=split)
    table = pd.read_csv(DATA / f'{split}.csv', dtype={'label': str})
    assert len(ds) == len(table)
    assert ds.classes is not None
    for i, value in enumerate(table['label']):
        sample = ds[i]
        assert sample['image'].shape == (3, 16, 16)
        assert sample['image'].dtype == torch.float32
        expected = int(value) if value.isdigit() else ds.classes.index(value)
        assert sample['label'].item() == expected
        # red = 3 * label + 10 in the generator
        assert sample['image'][0, 0, 0].item() == 3 * expected + 10


def test_label_by_name() -> None:
    table = pd.read_csv(DATA / 'train.csv', dtype={'label': str})
    row = int(np.flatnonzero(~table['label'].str.isdigit())[0])
    ds = NAIPLandCover(DATA)
    assert ds.classes is not None
    assert ds.classes[int(ds[row]['label'])] == table['label'][row]


def test_band_selection() -> None:
    ds = NAIPLandCover(DATA, bands=('NIR', 'R'))
    sample = ds[3]
    assert sample['image'].shape == (2, 16, 16)
    assert sample['image'][0, 0, 0].item() == 20 * 3
    assert sample['image'][1, 0, 0].item() == 3 * sample['label'].item() + 10


def test_invalid_band() -> None:
    with pytest.raises(ValueError, match="Invalid band 'SWIR'"):
        NAIPLandCover(DATA, bands=('R', 'SWIR'))


def test_chip_with_too_few_bands(root: Path) -> None:
    ds = NAIPLandCover(root, bands=('R', 'G', 'B', 'NIR'))
    path = ds.records['path'].iat[0]
    profile = {
        'driver': 'GTiff',
        'width': 4,
        'height': 4,
        'count': 3,
        'dtype': 'uint8',
        'crs': 'EPSG:26917',
        'transform': from_origin(0, 4, 1, 1),
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(
        InvalidSampleError,
        match=r"m_3008101_ne_17_060_000\.tif' .*has 3 band\(s\); band 'NIR' \(band 4\) was requested",
    ):
        ds[0]


def test_unknown_class_name(root: Path) -> None:
    path = root / 'train.csv'
    table = pd.read_csv(path, dtype={'label': str})
    table.loc[4, 'label'] = 'moon_rock'
    table.to_csv(path, index=False)
    with pytest.raises(
        InvalidSampleError,
        match=r"train\.csv', line 6: invalid label: 'moon_rock' is neither a class index in \[0, 65\] nor a class name",
    ):
        NAIPLandCover(root)


def test_label_out_of_range(root: Path) -> None:
    path = root / 'val.csv'
    table = pd.read_csv(path, dtype={'label': str})
    table.loc[0, 'label'] = '66'
    table.to_csv(path, index=False)
    with pytest.raises(
        InvalidSampleError, match=r"val\.csv', line 2: invalid label: '66'"
    ):
        NAIPLandCover(root, split='val')
    with pytest.warns(
        UserWarning, match=r'skipped 1 of 3 listed samples \(1 x invalid label\)'
    ):
        ds = NAIPLandCover(root, split='val', on_error='skip')
    assert ds.records['label'].tolist() == [40, 65]


def test_missing_column(root: Path) -> None:
    pd.read_csv(root / 'test.csv').drop(columns='label').to_csv(
        root / 'test.csv', index=False
    )
    with pytest.raises(
        ValueError, match=r"test\.csv' is missing required column\(s\) \['label'\]"
    ):
        NAIPLandCover(root, split='test')


def test_duplicate_class_name(root: Path) -> None:
    table = pd.read_csv(root / 'classes.csv')
    table.loc[5, 'name'] = table.loc[4, 'name']
    table.to_csv(root / 'classes.csv', index=False)
    with pytest.raises(
        ValueError, match="class name 'landcover_04' appears more than once"
    ):
        NAIPLandCover(root)


def test_missing_chip(root: Path) -> None:
    ds = NAIPLandCover(root, split='test')
    os.remove(ds.records['path'].iat[1])
    with pytest.raises(
        FileNotFoundError,
        match=r"060_001\.tif' \(listed in '.*test\.csv', line 3\) does not exist",
    ):
        ds[1]


def test_corrupt_chip_skipped(root: Path) -> None:
    ds = NAIPLandCover(root, split='test', on_error='skip')
    Path(ds.records['path'].iat[0]).write_bytes(b'II*\x00garbage')
    with pytest.warns(UserWarning, match=r'Cannot read chip .*060_000\.tif'):
        sample = ds[0]
    assert sample['label'].item() == ds.records['label'].iat[1]


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r'classes\.csv.*docs/datasets_wilds\.md'
    ):
        NAIPLandCover(tmp_path)


def test_unlabeled(root: Path) -> None:
    os.remove(root / 'classes.csv')
    ds = NAIPLandCoverUnlabeled(root, split='train', bands=('R', 'G', 'B', 'NIR'))
    assert len(ds) == len(pd.read_csv(root / 'train.csv'))
    sample = ds[0]
    assert set(sample) == {'image'}
    assert sample['image'].shape == (4, 16, 16)


def test_plot() -> None:
    ds = NAIPLandCover(DATA, bands=('NIR', 'B', 'G', 'R'))
    fig = ds.plot(ds[1])
    assert ds.classes is not None
    assert fig.axes[0].get_title() == f'Label: {ds.classes[5]}'
    NAIPLandCoverUnlabeled(DATA).plot(NAIPLandCoverUnlabeled(DATA)[0])
    plt.close('all')
    ds = NAIPLandCover(DATA, bands=('R', 'NIR'))
    with pytest.raises(RGBBandsMissingError):
        ds.plot(ds[0])
