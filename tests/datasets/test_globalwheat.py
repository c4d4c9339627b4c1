import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torchgeo.datasets import DatasetNotFoundError

from explora_geo.datasets.globalwheat import (
    GlobalWheat,
    GlobalWheatUnlabeled,
    parse_boxes,
)
from explora_geo.datasets.image_table import InvalidSampleError

DATA = Path(__file__).parents[1] / 'data' / 'globalwheat'
REAL = Path(__file__).parents[1] / 'data' / 'globalwheat_real'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    return tmp_path


def table_boxes(root: Path, split: str) -> list[list[list[float]]]:
    """The boxes of a split, read from its CSV independently of the dataset."""
    table = pd.read_csv(root / 'globalwheat_v1.1' / GlobalWheat.split_files[split])
    return [
        []
        if text == 'no_box'
        else [[float(v) for v in box.split()] for box in text.split(';')]
        for text in table['BoxesString']
    ]


@pytest.mark.parametrize('split', GlobalWheat.splits)
def test_samples(split: str) -> None:
    ds = GlobalWheat(DATA, split=split)
    expected = table_boxes(DATA, split)
    assert len(ds) == len(expected)
    for i, boxes in enumerate(expected):
        sample = ds[i]
        assert sample['image'].shape == (3, 32, 40)
        assert sample['image'].dtype == torch.float32
        assert sample['bbox_xyxy'].dtype == torch.float32
        assert sample['bbox_xyxy'].shape == (len(boxes), 4)
        assert sample['bbox_xyxy'].tolist() == boxes
        assert sample['label'].dtype == torch.long
        assert sample['label'].tolist() == [1] * len(boxes)
        # The generator paints every box white: boxes and pixels agree.
        for x1, y1, x2, y2 in sample['bbox_xyxy'].int().tolist():
            assert (sample['image'][:, y1:y2, x1:x2] == 255).all()


def test_no_box() -> None:
    sample = GlobalWheat(DATA)[1]
    assert sample['bbox_xyxy'].shape == (0, 4)
    assert sample['label'].shape == (0,)


def test_parse_boxes() -> None:
    boxes, problem = parse_boxes('1 2 3 4;5.5 6 7 8')
    assert problem == ''
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [5.5, 6, 7, 8]])
    assert parse_boxes('no_box')[0].shape == (0, 4)
    assert 'not four numbers' in parse_boxes('1 2 3')[1]
    assert 'not four numbers' in parse_boxes('1 2 x 4')[1]
    assert 'x1 < x2' in parse_boxes('5 2 5 4')[1]
    assert 'empty BoxesString' in parse_boxes(float('nan'))[1]


def test_malformed_boxes(root: Path) -> None:
    path = root / 'globalwheat_v1.1' / 'official_train.csv'
    table = pd.read_csv(path)
    table.loc[2, 'BoxesString'] = '5 20 12'
    table.to_csv(path, index=False)
    with pytest.raises(
        InvalidSampleError,
        match=r"official_train\.csv', line 4: invalid boxes: '5 20 12' is not four numbers",
    ):
        GlobalWheat(root)
    with pytest.warns(
        UserWarning, match=r'skipped 1 of 4 listed samples \(1 x invalid boxes\)'
    ):
        ds = GlobalWheat(root, on_error='skip')
    assert len(ds) == 3


def test_box_outside_image(root: Path) -> None:
    path = root / 'globalwheat_v1.1' / 'official_val.csv'
    table = pd.read_csv(path)
    table.loc[0, 'BoxesString'] = '8 8 41 16'
    table.to_csv(path, index=False)
    ds = GlobalWheat(root, split='val')
    with pytest.raises(
        InvalidSampleError,
        match=r'Box \[8.0, 8.0, 41.0, 16.0\] lies outside the 40 x 32 image',
    ):
        ds[0]


def test_missing_column(root: Path) -> None:
    path = root / 'globalwheat_v1.1' / 'official_test.csv'
    pd.read_csv(path).drop(columns='BoxesString').to_csv(path, index=False)
    with pytest.raises(
        ValueError,
        match=r"official_test\.csv' is missing required column\(s\) \['BoxesString'\]",
    ):
        GlobalWheat(root, split='test')


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r'globalwheat_v1\.1.*official_val\.csv'
    ):
        GlobalWheat(tmp_path, split='val')


@pytest.mark.parametrize('split', GlobalWheatUnlabeled.unlabeled_splits)
def test_unlabeled(split: str) -> None:
    ds = GlobalWheatUnlabeled(DATA, split=split)
    table = pd.read_csv(DATA / 'globalwheat_unlabeled_v1.0' / f'official_{split}.csv')
    assert len(ds) == len(table)
    assert set(ds[0]) == {'image'}


def test_unlabeled_from_labeled_split() -> None:
    ds = GlobalWheatUnlabeled(DATA, split='train')
    assert ds.data_dir.endswith('globalwheat_v1.1')
    assert len(ds) == len(GlobalWheat(DATA))
    assert set(ds[0]) == {'image'}


def test_plot() -> None:
    ds = GlobalWheat(DATA)
    sample = ds[0]
    fig = ds.plot(sample)
    assert fig.axes[0].get_title() == 'Ground truth: 2 boxes'
    assert len(fig.axes[0].patches) == 2
    sample['prediction_bbox_xyxy'] = sample['bbox_xyxy'][:1]
    fig = ds.plot(sample, suptitle='pred')
    assert [ax.get_title() for ax in fig.axes] == [
        'Ground truth: 2 boxes',
        'Prediction: 1 boxes',
    ]
    plt.close('all')


def test_real_imagery_boxes() -> None:
    """NEON tree crowns in the GlobalWheat layout: boxes load as written."""
    total = 0
    for split in ('train', 'val', 'test'):
        ds = GlobalWheat(REAL, split=split)
        expected = table_boxes(REAL, split)
        assert len(ds) == len(expected)
        for i, boxes in enumerate(expected):
            sample = ds[i]
            assert sample['image'].shape == (3, 100, 100)
            assert sample['bbox_xyxy'].tolist() == boxes
            assert len(sample['label']) == len(boxes)
            total += len(boxes)
    # Every one of the 61 crowns drawn on OSBS_029 went to exactly one tile.
    assert total == 61
