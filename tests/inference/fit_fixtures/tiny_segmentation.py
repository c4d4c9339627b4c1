"""A tiny segmentation datamodule, importable by LightningCLI in tests.

Four Sentinel-2 bands (B2, B3, B4, B8) in raw digital numbers; the mask is
1 where B8 exceeds 1500. Like explora_geo's datamodules it names its
normalisation and classes (``normalization``, ``classes``).
"""

from typing import Any

import torch
from kornia import augmentation as K
from torch import Tensor
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets import NonGeoDataset

from explora_geo.sensors import SENTINEL2

BANDS = ('B2', 'B3', 'B4', 'B8')


class TinySegmentation(NonGeoDataset):
    def __init__(self, split: str = 'train', **kwargs: Any) -> None:
        self.generator = torch.Generator().manual_seed(
            {'train': 0, 'val': 1}.get(split, 2)
        )

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = torch.randint(0, 3000, (4, 32, 32), generator=self.generator).float()
        return {'image': image, 'mask': (image[3] > 1500).long()}


class TinySegmentationDataModule(NonGeoDataModule):
    def __init__(self, batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__(TinySegmentation, batch_size, num_workers)
        self.normalization = SENTINEL2.normalization('standard', BANDS)
        self.classes = ('dark', 'bright')
        self.mean = torch.tensor(self.normalization.mean)
        self.std = torch.tensor(self.normalization.std)
        self.aug = K.AugmentationSequential(
            K.Normalize(mean=self.mean, std=self.std), data_keys=None, keepdim=True
        )
