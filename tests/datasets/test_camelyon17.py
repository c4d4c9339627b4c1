import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torchgeo.datasets import DatasetNotFoundError

from explora_geo.datasets.camelyon17 import Camelyon17, Camelyon17Unlabeled
from explora_geo.datasets.image_table import InvalidSampleError

DATA = Path(__file__).parents[1] / 'data' / 'camelyon17'
METADATA = DATA / 'camelyon17_v1.0' / 'metadata.csv'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    return tmp_path


def official(split: str) -> pd.DataFrame:
    """Rows of the official WILDS split, from the split definition."""
    table = pd.read_csv(METADATA, index_col=0, dtype={'patient': str})
    in_train_hospitals = ~table['center'].isin([1, 2])
    masks = {
        'train': in_train_hospitals & (table['split'] == 0),
        'id_val': in_train_hospitals & (table['split'] == 1),
        'val': table['center'] == 1,
        'test': table['center'] == 2,
    }
    return table[masks[split]]


@pytest.mark.parametrize('split', Camelyon17.splits)
def test_official_splits(split: str) -> None:
    ds = Camelyon17(DATA, split=split)
    rows = official(split)
    assert len(ds) == len(rows) > 0
    for i, (_, row) in enumerate(rows.iterrows()):
        sample = ds[i]
        assert sample['image'].shape == (3, 16, 16)
        assert sample['label'].dtype == torch.long
        assert sample['label'].item() == row['tumor']
        # red = 100 * tumor + 50 in the generator: the label matches its patch
        assert round((sample['image'][0, 0, 0].item() - 50) / 100) == row['tumor']
        expected = (
            f'patient_{row["patient"]}_node_{row["node"]}/patch_patient_{row["patient"]}'
            f'_node_{row["node"]}_x_{row["x_coord"]}_y_{row["y_coord"]}.png'
        )
        assert ds.records['path'].iat[i].endswith(expected)


def test_zero_padded_patient_ids() -> None:
    ds = Camelyon17(DATA, split='train')
    assert any('patient_004_node_4' in p for p in ds.records['path'])


def test_unlabeled_splits_by_hospital() -> None:
    table = pd.read_csv(DATA / 'camelyon17_unlabeled_v1.0' / 'metadata.csv')
    expected = {
        'train_unlabeled': (~table['center'].isin([1, 2])).sum(),
        'val_unlabeled': (table['center'] == 1).sum(),
        'test_unlabeled': (table['center'] == 2).sum(),
    }
    for split, count in expected.items():
        ds = Camelyon17Unlabeled(DATA, split=split)
        assert ds.data_dir.endswith('camelyon17_unlabeled_v1.0')
        assert len(ds) == count
        assert set(ds[0]) == {'image'}


def test_unlabeled_from_labeled_split() -> None:
    ds = Camelyon17Unlabeled(DATA, split='val')
    assert len(ds) == len(official('val'))
    assert set(ds[0]) == {'image'}


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r'camelyon17_unlabeled_v1\.0.*metadata\.csv'
    ):
        Camelyon17Unlabeled(tmp_path)


def test_missing_column(root: Path) -> None:
    path = root / 'camelyon17_v1.0' / 'metadata.csv'
    pd.read_csv(path, index_col=0).drop(columns='center').to_csv(path)
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['center'\]"):
        Camelyon17(root)


def test_label_out_of_range(root: Path) -> None:
    path = root / 'camelyon17_v1.0' / 'metadata.csv'
    table = pd.read_csv(path, index_col=0, dtype={'patient': str})
    table.loc[1, 'tumor'] = 2
    table.to_csv(path)
    with pytest.raises(
        InvalidSampleError,
        match=r'line 3: invalid label: 2 is not a class index in \[0, 1\]',
    ):
        Camelyon17(root)


def test_missing_patch(root: Path) -> None:
    ds = Camelyon17(root, split='test')
    os.remove(ds.records['path'].iat[0])
    with pytest.raises(
        FileNotFoundError,
        match=r"patch_patient_042_node_3_x_\d+_y_\d+\.png' \(listed in",
    ):
        ds[0]


def test_plot() -> None:
    ds = Camelyon17(DATA)
    fig = ds.plot(ds[1])
    assert fig.axes[0].get_title() == f'Label: {ds.classes[int(ds[1]["label"])]}'
    Camelyon17Unlabeled(DATA).plot(Camelyon17Unlabeled(DATA)[0])
    plt.close('all')
