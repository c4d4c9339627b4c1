"""The constructor shared by the WILDS datasets (:class:`WILDSImageDataset`)."""

import os
from pathlib import Path

import pytest
from torchgeo.datasets import DatasetNotFoundError

from explora_geo.datasets.camelyon17 import Camelyon17, Camelyon17Unlabeled
from explora_geo.datasets.globalwheat import GlobalWheat, GlobalWheatUnlabeled
from explora_geo.datasets.iwildcam import IWildCam, IWildCamUnlabeled
from explora_geo.datasets.wilds import WILDSImageDataset

DATA = Path(__file__).parents[1] / 'data'

#: class, its test data, the split read by default, and the release folder that
#: split is read from.
DEFAULTS: list[tuple[type[WILDSImageDataset], str, str, str]] = [
    (Camelyon17, 'camelyon17', 'train', 'camelyon17_v1.0'),
    (Camelyon17Unlabeled, 'camelyon17', 'train_unlabeled', 'camelyon17_unlabeled_v1.0'),
    (IWildCam, 'iwildcam', 'train', 'iwildcam_v2.0'),
    (IWildCamUnlabeled, 'iwildcam', 'extra_unlabeled', 'iwildcam_unlabeled_v1.0'),
    (GlobalWheat, 'globalwheat', 'train', 'globalwheat_v1.1'),
    (
        GlobalWheatUnlabeled,
        'globalwheat',
        'train_unlabeled',
        'globalwheat_unlabeled_v1.0',
    ),
]


@pytest.mark.parametrize(
    ('cls', 'data', 'split', 'folder'),
    DEFAULTS,
    ids=lambda v: getattr(v, '__name__', v),
)
def test_default_split_and_version(
    cls: type[WILDSImageDataset], data: str, split: str, folder: str
) -> None:
    ds = cls(DATA / data)
    assert ds.split == split
    assert os.path.basename(ds.data_dir) == folder
    assert f'{ds.release}_v{ds.version}' == folder
    assert len(ds) > 0
    # split=None and version=None mean the class's defaults, as omitting them.
    explicit = cls(DATA / data, split=None, version=None)
    assert (explicit.split, explicit.data_dir) == (split, ds.data_dir)


@pytest.mark.parametrize(
    ('cls', 'data', 'split', 'folder'),
    [
        # A labeled split read through the unlabeled class comes from the labeled
        # release, at that release's default version.
        (IWildCamUnlabeled, 'iwildcam', 'val', 'iwildcam_v2.0'),
        (GlobalWheatUnlabeled, 'globalwheat', 'train', 'globalwheat_v1.1'),
        (Camelyon17Unlabeled, 'camelyon17', 'test', 'camelyon17_v1.0'),
    ],
    ids=lambda v: getattr(v, '__name__', v),
)
def test_labeled_split_of_unlabeled_class(
    cls: type[WILDSImageDataset], data: str, split: str, folder: str
) -> None:
    ds = cls(DATA / data, split=split)
    assert not ds.from_unlabeled_release
    assert os.path.basename(ds.data_dir) == folder
    assert set(ds[0]) == {'image'}


@pytest.mark.parametrize('cls', [d[0] for d in DEFAULTS], ids=lambda c: c.__name__)
def test_version_reaches_the_release_folder(
    cls: type[WILDSImageDataset], tmp_path: Path
) -> None:
    with pytest.raises(DatasetNotFoundError, match=r'_v9\.9[/\\]'):
        cls(tmp_path, version='9.9')


@pytest.mark.parametrize('cls', [d[0] for d in DEFAULTS], ids=lambda c: c.__name__)
def test_invalid_split(cls: type[WILDSImageDataset], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split must be one of \(.*\), got 'nope'"):
        cls(tmp_path, split='nope')


def test_keywords_reach_the_base() -> None:
    ds = IWildCam(DATA / 'iwildcam', 'val', '2.0', None, False, 'skip')
    assert (ds.split, ds.version, ds.download, ds.on_error) == (
        'val',
        '2.0',
        False,
        'skip',
    )
    with pytest.raises(
        ValueError, match=r"on_error must be 'raise' or 'skip', got 'x'"
    ):
        IWildCam(DATA / 'iwildcam', on_error='x')  # type: ignore[arg-type]
