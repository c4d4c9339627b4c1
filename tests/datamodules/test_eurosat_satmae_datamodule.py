from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from torchgeo.datasets import EuroSAT

from explora_geo.datamodules.eurosat import SATMAE_BANDS, EuroSATSatMAEDataModule
from explora_geo.datasets.fmow_sentinel import FMoWSentinel

CLASSES = ('AnnualCrop', 'Forest')


def make_eurosat(root: Path) -> dict[str, np.ndarray]:
    """Write a tiny EuroSAT in torchgeo's layout: constant 13-band 8 x 8 chips."""
    folder = root.joinpath(EuroSAT.base_dir)
    values = {}
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i, split in enumerate(['train', 'train', 'val', 'test']):
            stem = f'{name}_{i + 1}'
            value = rng.integers(0, 4000, size=13).astype(np.uint16)
            profile = {
                'driver': 'GTiff',
                'width': 8,
                'height': 8,
                'count': 13,
                'dtype': 'uint16',
                'crs': 'EPSG:32631',
                'transform': from_origin(500000, 5000000 + 80 * c, 10, 10),
            }
            with rasterio.open(folder / name / f'{stem}.tif', 'w', **profile) as dst:
                dst.write(np.broadcast_to(value[:, None, None], (13, 8, 8)))
            values[f'{stem}.tif'] = value
            names[split].append(f'{stem}.jpg')
    for split, files in names.items():
        (root / EuroSAT.split_filenames[split]).write_text('\n'.join(files) + '\n')
    return values


def test_satmae_inputs(tmp_path: Path) -> None:
    values = make_eurosat(tmp_path)
    dm = EuroSATSatMAEDataModule(batch_size=2, root=tmp_path, checksum=False)
    dm.setup('fit')
    dataset = dm.val_dataset
    assert isinstance(dataset, EuroSAT)
    sample = dataset[0]
    assert sample['image'].shape == (10, 8, 8)
    raw = values[dataset.samples[0][0].split('/')[-1]]
    order = [EuroSAT.all_band_names.index(b) for b in SATMAE_BANDS]
    mean = np.array([FMoWSentinel.mean[b.replace('B0', 'B')] for b in SATMAE_BANDS])
    std = np.array([FMoWSentinel.std[b.replace('B0', 'B')] for b in SATMAE_BANDS])
    expected = np.clip((raw[order] - (mean - 2 * std)) / (4 * std), 0, 1)
    torch.testing.assert_close(
        sample['image'][:, 0, 0].double(), torch.from_numpy(expected)
    )

    batch = next(iter(dm.val_dataloader()))
    out = dm.aug(batch)
    assert out['image'].shape == (2, 10, 96, 96)
    # constant chips stay constant through the resize and centre crop
    torch.testing.assert_close(out['image'][:, :, 50, 50], batch['image'][:, :, 0, 0])
    assert dm.train_aug is not None
    train = dm.train_aug(next(iter(dm.train_dataloader())))
    assert train['image'].shape == (2, 10, 96, 96)
    assert train['image'].min() >= 0 and train['image'].max() <= 1
