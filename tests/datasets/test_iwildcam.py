import os
import shutil
import sys
import types
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torchgeo.datasets import DatasetNotFoundError, RGBBandsMissingError
from torchgeo.datasets.errors import DependencyNotFoundError

from explora_geo.datasets.image_table import InvalidSampleError
from explora_geo.datasets.iwildcam import IWildCam, IWildCamUnlabeled

DATA = Path(__file__).parents[1] / 'data' / 'iwildcam'
METADATA = DATA / 'iwildcam_v2.0' / 'metadata.csv'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    return tmp_path


def split_rows(split: str) -> pd.DataFrame:
    table = pd.read_csv(METADATA)
    return table[table['split'] == split]


@pytest.mark.parametrize('split', IWildCam.splits)
def test_splits_images_and_labels(split: str) -> None:
    ds = IWildCam(DATA, split=split)
    rows = split_rows(split)
    assert len(ds) == len(rows)
    for i, (_, row) in enumerate(rows.iterrows()):
        sample = ds[i]
        image, label = sample['image'], sample['label']
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert label.dtype == torch.long and label.shape == ()
        assert label.item() == row['y']
        # The generator paints red = 40 * y + 20: the label belongs to its image.
        assert round((image[0].mean().item() - 20) / 40) == label.item()


def test_classes_skip_categories_without_index() -> None:
    ds = IWildCam(DATA)
    categories = pd.read_csv(DATA / 'iwildcam_v2.0' / 'categories.csv')
    indexed = categories[categories['y'].notna()].sort_values('y')
    assert ds.classes == list(indexed['name'])
    assert 'puma concolor' not in ds.classes


def test_images_keep_their_size() -> None:
    ds = IWildCam(DATA)
    shapes = {tuple(ds[i]['image'].shape[1:]) for i in range(len(ds))}
    assert len(shapes) > 1


def test_unlabeled_release() -> None:
    ds = IWildCamUnlabeled(DATA, split='extra_unlabeled')
    assert ds.data_dir.endswith('iwildcam_unlabeled_v1.0')
    table = pd.read_csv(DATA / 'iwildcam_unlabeled_v1.0' / 'metadata.csv')
    assert len(ds) == len(table)
    sample = ds[0]
    assert set(sample) == {'image'}
    assert sample['image'].shape == (3, 20, 30)


def test_unlabeled_from_labeled_split() -> None:
    unlabeled = IWildCamUnlabeled(DATA, split='train')
    labeled = IWildCam(DATA, split='train')
    assert len(unlabeled) == len(labeled)
    assert set(unlabeled[1]) == {'image'}
    assert torch.equal(unlabeled[1]['image'], labeled[1]['image'])


def test_invalid_split() -> None:
    with pytest.raises(ValueError, match="split must be one of.*'bogus'"):
        IWildCam(DATA, split='bogus')


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r'iwildcam_v2\.0.*metadata\.csv'
    ) as e:
        IWildCam(tmp_path)
    assert 'wilds.stanford.edu' in str(e.value)
    assert 'download=True' in str(e.value)


def test_download_without_wilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, 'wilds', None)
    with pytest.raises(DependencyNotFoundError, match=r'explora-geo\[wilds\]'):
        IWildCam(tmp_path, download=True)


def test_download_with_wilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def get_dataset(**kwargs: object) -> None:
        calls.append(kwargs)
        shutil.copytree(DATA / 'iwildcam_v2.0', tmp_path / 'iwildcam_v2.0')

    fake = types.ModuleType('wilds')
    fake.get_dataset = get_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, 'wilds', fake)
    ds = IWildCam(tmp_path, split='val', download=True)
    assert len(ds) == len(split_rows('val'))
    assert calls == [
        {
            'dataset': 'iwildcam',
            'version': '2.0',
            'unlabeled': False,
            'root_dir': os.fspath(tmp_path),
            'download': True,
        }
    ]


def test_missing_column(root: Path) -> None:
    path = root / 'iwildcam_v2.0' / 'metadata.csv'
    pd.read_csv(path, index_col=0).drop(columns='y').to_csv(path)
    with pytest.raises(
        ValueError, match=r"metadata\.csv' is missing required column\(s\) \['y'\]"
    ):
        IWildCam(root)


def test_missing_image(root: Path) -> None:
    name = split_rows('train')['filename'].iloc[1]
    os.remove(root / 'iwildcam_v2.0' / 'train' / name)
    ds = IWildCam(root)
    with pytest.raises(
        FileNotFoundError,
        match=rf"{name}' \(listed in '.*metadata\.csv', line 3\) does not exist",
    ):
        ds[1]


def test_missing_image_skipped(root: Path) -> None:
    name = split_rows('train')['filename'].iloc[1]
    os.remove(root / 'iwildcam_v2.0' / 'train' / name)
    with pytest.warns(
        UserWarning, match=r'skipped 1 of 4 listed samples \(1 x image file missing\)'
    ):
        ds = IWildCam(root, on_error='skip')
    assert len(ds) == 3
    assert name not in ''.join(ds.records['path'])


def test_corrupt_image(root: Path) -> None:
    name = split_rows('train')['filename'].iloc[2]
    (root / 'iwildcam_v2.0' / 'train' / name).write_bytes(b'\xff\xd8\xff truncated')
    ds = IWildCam(root)
    with pytest.raises(InvalidSampleError, match=rf'Cannot decode image .*{name}'):
        ds[2]


def test_corrupt_image_skipped(root: Path) -> None:
    rows = split_rows('train')
    name = rows['filename'].iloc[2]
    (root / 'iwildcam_v2.0' / 'train' / name).write_bytes(b'not a jpeg')
    ds = IWildCam(root, on_error='skip')
    with pytest.warns(
        UserWarning,
        match=r'skipped a sample: Cannot decode.*1 sample\(s\) skipped so far',
    ):
        sample = ds[2]
    # The next sample is returned in its place, with its own label.
    assert sample['label'].item() == rows['y'].iloc[3]
    assert list(ds.skipped) == [str(root / 'iwildcam_v2.0' / 'train' / name)]


def test_label_out_of_range(root: Path) -> None:
    path = root / 'iwildcam_v2.0' / 'metadata.csv'
    table = pd.read_csv(path, index_col=0)
    table.loc[table.index[1], 'y'] = 7
    table.to_csv(path)
    with pytest.raises(
        InvalidSampleError,
        match=r"metadata\.csv', line 3: invalid label: 7 is not a class index in \[0, 3\]",
    ):
        IWildCam(root)
    with pytest.warns(UserWarning, match=r'1 x invalid label'):
        ds = IWildCam(root, on_error='skip')
    assert len(ds) == 3
    assert 7 not in ds.records['label'].tolist()


def test_bad_class_list(root: Path) -> None:
    path = root / 'iwildcam_v2.0' / 'categories.csv'
    table = pd.read_csv(path)
    table.loc[1, 'y'] = 5
    table.to_csv(path, index=False)
    with pytest.raises(
        ValueError,
        match=r"categories\.csv': column 'y' must hold the class indices 0 \.\. 3",
    ):
        IWildCam(root)


def test_invalid_on_error() -> None:
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        IWildCam(DATA, on_error='ignore')  # type: ignore[arg-type]


def test_index_out_of_range() -> None:
    ds = IWildCam(DATA, split='val')
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert torch.equal(ds[-1]['image'], ds[len(ds) - 1]['image'])


def test_plot() -> None:
    ds = IWildCam(DATA)
    sample = ds[0]
    fig = ds.plot(sample, suptitle='test')
    assert fig.axes[0].get_title() == f'Label: {ds.classes[int(sample["label"])]}'
    sample['prediction'] = torch.tensor(1)
    fig = ds.plot(sample)
    assert f'Prediction: {ds.classes[1]}' in fig.axes[0].get_title()
    fig = IWildCamUnlabeled(DATA).plot(IWildCamUnlabeled(DATA)[0])
    plt.close('all')


def test_plot_rgb_missing() -> None:
    ds = IWildCam(DATA)
    sample = ds[0]
    sample['image'] = sample['image'][:2]
    with pytest.raises(RGBBandsMissingError):
        ds.plot(sample)
