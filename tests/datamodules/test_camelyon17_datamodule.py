import shutil
import sys
import types
from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
from torch import nn

from explora_geo.datamodules.camelyon17 import Camelyon17DataModule
from explora_geo.datasets.camelyon17 import Camelyon17, Camelyon17Unlabeled
from tests.datamodules.lengths import length

ROOT = Path(__file__).parents[1] / 'data' / 'camelyon17'


def test_default_augmentation_never_crops() -> None:
    dm = Camelyon17DataModule(root=ROOT)
    assert isinstance(dm.train_aug, nn.Module)
    types = [type(m) for m in dm.train_aug.children()]
    assert types == [K.Normalize, K.RandomHorizontalFlip, K.RandomVerticalFlip]
    dm = Camelyon17DataModule(root=ROOT, crop_scale=(0.5, 1.0))
    assert isinstance(dm.train_aug, nn.Module)
    assert K.RandomResizedCrop in [type(m) for m in dm.train_aug.children()]


def test_official_splits() -> None:
    dm = Camelyon17DataModule(
        batch_size=2, image_size=24, root=ROOT, val_split='id_val'
    )
    dm.setup('fit')
    assert length(dm.train_dataset) == len(Camelyon17(ROOT, split='train'))
    assert length(dm.val_dataset) == len(Camelyon17(ROOT, split='id_val'))
    batch = next(iter(dm.train_dataloader()))
    assert batch['image'].shape == (2, 3, 24, 24)
    # upsampling a solid patch keeps its colour, so labels still match images
    torch.testing.assert_close(
        batch['image'][:, 0, 0, 0], 100 * batch['label'].float() + 50
    )
    dm.setup('test')
    assert length(dm.test_dataset) == len(Camelyon17(ROOT, split='test'))


def test_pretraining_splits() -> None:
    dm = Camelyon17DataModule(
        batch_size=1,
        image_size=16,
        root=ROOT,
        unlabeled=True,
        pretrain_val_split='val_unlabeled',
    )
    dm.setup('fit')
    assert length(dm.train_dataset) == len(
        Camelyon17Unlabeled(ROOT, split='train_unlabeled')
    )
    assert length(dm.val_dataset) == len(
        Camelyon17Unlabeled(ROOT, split='val_unlabeled')
    )
    assert set(next(iter(dm.val_dataloader()))) == {'image'}


def test_prepare_data_downloads_the_pretraining_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def get_dataset(**kwargs: object) -> None:
        calls.append(kwargs)
        shutil.copytree(
            ROOT / 'camelyon17_unlabeled_v1.0', tmp_path / 'camelyon17_unlabeled_v1.0'
        )

    fake = types.ModuleType('wilds')
    fake.get_dataset = get_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, 'wilds', fake)
    dm = Camelyon17DataModule(root=tmp_path, download=True, unlabeled=True)
    dm.prepare_data()
    assert [(c['dataset'], c['unlabeled'], c['version']) for c in calls] == [
        ('camelyon17', True, '1.0')
    ]
    dm.setup('fit')
    assert length(dm.train_dataset) == len(
        Camelyon17Unlabeled(ROOT, split='train_unlabeled')
    )
