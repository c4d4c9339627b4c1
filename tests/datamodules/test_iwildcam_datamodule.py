from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
from kornia.geometry.transform import resize
from lightning.pytorch import Trainer
from torch import nn
from torchgeo.tasks import Classification

from explora_geo.datamodules.image_splits import resize_short_side
from explora_geo.datamodules.iwildcam import IWildCamDataModule
from explora_geo.datasets.iwildcam import IWildCam
from explora_geo.sensors import IMAGENET_RGB
from tests.datamodules.lengths import length

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_RGB.stats()

ROOT = Path(__file__).parents[1] / 'data' / 'iwildcam'


def test_resize_short_side() -> None:
    image = torch.arange(2 * 24 * 48, dtype=torch.float32).reshape(2, 24, 48)
    out = resize_short_side(12)({'image': image})['image']
    assert out.shape == (2, 12, 12)
    # Shorter side 24 -> 12 scales the width 48 -> 24, of which the centre 12
    # columns (6 .. 17) are kept.
    resized = resize(image[None], (12, 24), align_corners=True, antialias=True)[0]
    torch.testing.assert_close(out, resized[:, :, 6:18])


def test_splits_and_batches() -> None:
    dm = IWildCamDataModule(
        batch_size=2, image_size=32, root=ROOT, val_split='id_val', test_split='id_test'
    )
    dm.setup('fit')
    assert length(dm.train_dataset) == len(IWildCam(ROOT, split='train'))
    assert length(dm.val_dataset) == len(IWildCam(ROOT, split='id_val'))
    batch = next(iter(dm.train_dataloader()))
    assert batch['image'].shape == (2, 3, 32, 32)
    assert batch['label'].dtype == torch.long
    dm.setup('test')
    assert length(dm.test_dataset) == len(IWildCam(ROOT, split='id_test'))


def test_augmentation() -> None:
    dm = IWildCamDataModule(batch_size=2, image_size=32, root=ROOT)
    assert isinstance(dm.train_aug, nn.Module)
    types = [type(m) for m in dm.train_aug.children()]
    assert types == [K.Normalize, K.RandomResizedCrop, K.RandomHorizontalFlip]
    image = IMAGENET_MEAN.view(1, 3, 1, 1).expand(2, 3, 40, 40).clone()
    batch = dm.train_aug({'image': image, 'label': torch.tensor([0, 1])})
    assert batch['image'].shape == (2, 3, 32, 32)
    torch.testing.assert_close(batch['image'], torch.zeros(2, 3, 32, 32))
    one_std = (IMAGENET_MEAN + IMAGENET_STD).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    torch.testing.assert_close(
        dm.aug({'image': one_std.clone()})['image'], torch.ones(1, 3, 8, 8)
    )


def test_unlabeled_mode() -> None:
    dm = IWildCamDataModule(
        batch_size=3,
        image_size=16,
        root=ROOT,
        unlabeled=True,
        pretrain_split='extra_unlabeled',
    )
    dm.setup('fit')
    assert dm.val_dataset is None
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {'image'}
    assert batch['image'].shape == (3, 3, 16, 16)
    assert dm.train_aug is None  # only the normalisation of dm.aug


def test_user_transform_runs_after_resize() -> None:
    seen = []

    def record(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(tuple(sample['image'].shape))
        return sample

    dm = IWildCamDataModule(batch_size=1, image_size=16, root=ROOT, transforms=record)
    dm.setup('fit')
    assert dm.train_dataset is not None
    dm.train_dataset[0]
    assert seen == [(3, 16, 16)]


@pytest.mark.slow
def test_trainer_fit(tmp_path: Path) -> None:
    dm = IWildCamDataModule(batch_size=2, image_size=32, root=ROOT)
    task = Classification(model='resnet18', weights=None, in_channels=3, num_classes=4)
    trainer = Trainer(
        fast_dev_run=True, accelerator='cpu', default_root_dir=tmp_path, logger=False
    )
    trainer.fit(task, datamodule=dm)
    assert trainer.state.finished
