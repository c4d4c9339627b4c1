import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from torch.utils.data import DataLoader
from torchgeo.datasets import DatasetNotFoundError, RGBBandsMissingError

from explora_geo.datasets.fmow_base import resize_and_center_crop
from explora_geo.datasets.fmow_metadata import FMoWSampleError
from explora_geo.datasets.fmow_sentinel import FMoWSentinel
from explora_geo.sensors import SENTINEL2

ROOT = os.path.join('tests', 'data', 'fmow_sentinel')
REAL = os.path.join('tests', 'data', 'fmow_sentinel_real')
MEAN = list(SENTINEL2.mean)
STD = list(SENTINEL2.std)


def copy_root(tmp_path: Path) -> Path:
    root = tmp_path / 'fmow_sentinel'
    shutil.copytree(ROOT, root)
    return root


def read_raw(ds: FMoWSentinel, index: int) -> np.ndarray:
    with rasterio.open(ds.files[index]) as src:
        return src.read().astype(np.float32)


def rewrite(path: Path, data: np.ndarray, **profile: object) -> None:
    with rasterio.open(path) as src:
        base = src.profile
    base.update(count=data.shape[0], dtype=data.dtype.name, **profile)
    with rasterio.open(path, 'w', **base) as dst:
        dst.write(data)


def test_statistics_match_reference() -> None:
    assert FMoWSentinel.all_bands == (
        'B1',
        'B2',
        'B3',
        'B4',
        'B5',
        'B6',
        'B7',
        'B8',
        'B8A',
        'B9',
        'B10',
        'B11',
        'B12',
    )
    assert FMoWSentinel.default_bands == (
        'B2',
        'B3',
        'B4',
        'B5',
        'B6',
        'B7',
        'B8',
        'B8A',
        'B11',
        'B12',
    )
    mean = [FMoWSentinel.mean[b] for b in FMoWSentinel.all_bands]
    std = [FMoWSentinel.std[b] for b in FMoWSentinel.all_bands]
    np.testing.assert_allclose(mean, MEAN, atol=0.01)
    np.testing.assert_allclose(std, STD, atol=0.01)


class TestFMoWSentinel:
    def test_index(self) -> None:
        ds = FMoWSentinel(ROOT, 'train')
        assert len(ds) == 6
        assert ds.labels.tolist() == [0, 0, 0, 0, 11, 11]
        assert ds.locations.tolist()[:4] == ['airport_0'] * 3 + ['airport_1']
        assert str(ds.files[2]).endswith(
            os.path.join(
                'fmow-sentinel', 'train', 'airport', 'airport_0', 'airport_0_100.tif'
            )
        )
        assert len(FMoWSentinel(ROOT, 'val')) == 2
        test = FMoWSentinel(ROOT, 'test')
        assert len(test) == 1
        assert os.path.join('test_gt', 'dam') in str(test.files[0])

    def test_sample_default_bands(self) -> None:
        ds = FMoWSentinel(ROOT, 'train')
        sample = ds[0]
        raw = read_raw(ds, 0)
        keep = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]
        assert sample['image'].dtype == torch.float32
        assert sample['image'].shape == (10, 12, 14)
        assert torch.equal(sample['image'], torch.from_numpy(raw[keep]))
        assert sample['label'].dtype == torch.int64
        assert sample['label'].item() == 0
        assert sample['timestamp'].tolist() == [2016, 5, 15]
        assert ds[5]['timestamp'].tolist() == [2019, 10, 0]

    def test_band_selection(self) -> None:
        ds = FMoWSentinel(ROOT, 'train', bands=('B8', 'B4', 'B10'))
        raw = read_raw(ds, 1)
        assert torch.equal(ds[1]['image'], torch.from_numpy(raw[[7, 3, 10]]))

    def test_satmae_normalization(self) -> None:
        ds = FMoWSentinel(
            ROOT, 'train', bands=FMoWSentinel.all_bands, normalization='satmae'
        )
        raw = read_raw(ds, 4)
        mean = np.array(MEAN)[:, None, None]
        std = np.array(STD)[:, None, None]
        expected = np.clip((raw - (mean - 2 * std)) / (4 * std), 0, 1)
        image = ds[4]['image']
        np.testing.assert_allclose(image.numpy(), expected, atol=1e-4)
        assert image.min() >= 0 and image.max() <= 1
        # The fake values are drawn around the means, so the clip is exercised.
        assert (image == 0).any() and (image == 1).any()

    def test_size_and_collate(self) -> None:
        ds = FMoWSentinel(ROOT, 'train', size=8)
        raw = torch.from_numpy(read_raw(ds, 2)[[1, 2, 3, 4, 5, 6, 7, 8, 11, 12]])
        expected, _ = resize_and_center_crop(raw, 8)
        assert torch.allclose(ds[2]['image'], expected)
        batch = next(iter(DataLoader(ds, batch_size=6)))
        assert batch['image'].shape == (6, 10, 8, 8)
        assert batch['label'].tolist() == [0, 0, 0, 0, 11, 11]
        assert batch['timestamp'].shape == (6, 3)

    def test_plot(self) -> None:
        ds = FMoWSentinel(ROOT, 'train')
        fig = ds.plot(ds[0], suptitle='Test')
        assert fig.axes[0].get_title() == 'Label: airport'
        plt.close(fig)
        ds = FMoWSentinel(ROOT, 'train', bands=('B8', 'B11'))
        with pytest.raises(RGBBandsMissingError):
            ds.plot(ds[0])

    def test_not_found(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match='Dataset not found') as info:
            FMoWSentinel(tmp_path)
        assert 'purl.stanford.edu/vg497cb6002' in info.value.__notes__[0]
        shutil.copy(os.path.join(ROOT, 'train.csv'), tmp_path)
        with pytest.raises(DatasetNotFoundError):
            FMoWSentinel(tmp_path)

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match="'B13' is an invalid band name"):
            FMoWSentinel(ROOT, bands=('B2', 'B13'))
        with pytest.raises(ValueError, match='contains duplicates'):
            FMoWSentinel(ROOT, bands=('B2', 'B2'))
        with pytest.raises(ValueError, match="bands='B2' is invalid"):
            FMoWSentinel(ROOT, bands='B2')
        with pytest.raises(ValueError, match="normalization='zscore' is invalid"):
            FMoWSentinel(ROOT, normalization='zscore')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match='size=0 is invalid'):
            FMoWSentinel(ROOT, size=0)


class TestBadInput:
    def test_missing_file(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        os.remove(root / 'fmow-sentinel/train/airport/airport_1/airport_1_0.tif')
        ds = FMoWSentinel(root, 'train')
        with pytest.raises(
            FMoWSampleError,
            match=r'airport_1_0.tif \(listed in .*train.csv line 5\): file not found',
        ):
            ds[3]

    def test_truncated_geotiff(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'fmow-sentinel/train/airport/airport_0/airport_0_1.tif'
        path.write_bytes(path.read_bytes()[:2000])
        with pytest.raises(
            FMoWSampleError,
            match=r'airport_0_1.tif \(listed in .*train.csv line 3\): cannot read GeoTIFF',
        ):
            FMoWSentinel(root, 'train')[1]

    def test_not_a_geotiff(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'fmow-sentinel/train/airport/airport_0/airport_0_1.tif'
        path.write_bytes(b'GIF89a garbage')
        with pytest.raises(
            FMoWSampleError,
            match=r'airport_0_1.tif .*: cannot read GeoTIFF .*not recognized',
        ):
            FMoWSentinel(root, 'train')[1]

    def test_wrong_band_count(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'fmow-sentinel/train/airport/airport_0/airport_0_0.tif'
        with rasterio.open(path) as src:
            data = src.read()
        rewrite(path, data[:1])
        with pytest.raises(
            FMoWSampleError,
            match=r'airport_0_0.tif .*: expected 13 bands \(B1 B2 .* B12\), found 1',
        ):
            FMoWSentinel(root, 'train')[0]

    def test_nodata_pixels(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'fmow-sentinel/train/airport/airport_0/airport_0_0.tif'
        with rasterio.open(path) as src:
            data = src.read()
        data[3, :2, :3] = 0  # B4
        data[10, :, :] = 0  # B10 is not loaded by default
        rewrite(path, data, nodata=0)
        with pytest.raises(
            FMoWSampleError,
            match=r'airport_0_0.tif .*: NaN or nodata \(0.0\) pixels in the selected bands \(B4: 6 of 168 pixels\)',
        ):
            FMoWSentinel(root, 'train')[0]

    def test_nan_pixels(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        path = root / 'fmow-sentinel/train/airport/airport_0/airport_0_0.tif'
        with rasterio.open(path) as src:
            data = src.read().astype(np.float32)
        data[7, 0, 0] = np.nan  # B8
        rewrite(path, data)
        with pytest.raises(
            FMoWSampleError,
            match=r'NaN or nodata \(None\) pixels in the selected bands \(B8: 1 of',
        ):
            FMoWSentinel(root, 'train')[0]

    def test_skip_counts(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        os.remove(root / 'fmow-sentinel/train/airport/airport_0/airport_0_1.tif')
        (root / 'fmow-sentinel/train/airport/airport_0/airport_0_100.tif').write_bytes(
            b''
        )
        ds = FMoWSentinel(root, 'train', on_error='skip')
        with pytest.warns(UserWarning) as record:
            sample = ds[1]
        messages = [str(w.message) for w in record]
        assert 'airport_0_1.tif' in messages[0] and '(1 skipped so far' in messages[0]
        assert 'airport_0_100.tif' in messages[1] and '(2 skipped so far' in messages[1]
        # Sample 3 (airport_1) replaces 1 and 2, with its own label and timestamp.
        assert sample['timestamp'].tolist() == [2015, 8, 6]
        assert sample['label'].item() == 0
        assert sorted(ds.skipped) == [1, 2]

    def test_missing_column(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        table = pd.read_csv(root / 'train.csv', dtype=str)
        table.drop(columns=['location_id']).to_csv(root / 'train.csv', index=False)
        with pytest.raises(
            FMoWSampleError,
            match=r"train.csv: missing required column\(s\) \['location_id'\]; found \['category', 'image_id', 'timestamp', 'polygon'\]",
        ):
            FMoWSentinel(root, 'train')

    def test_unknown_class_and_bad_timestamp(self, tmp_path: Path) -> None:
        root = copy_root(tmp_path)
        table = pd.read_csv(root / 'train.csv', dtype=str)
        table.loc[1, 'category'] = 'Airport'
        table.loc[4, 'timestamp'] = '21/06/2017'
        table.to_csv(root / 'train.csv', index=False)
        with pytest.raises(
            FMoWSampleError,
            match=r"train.csv line 3: unknown fMoW class 'Airport'.*\(and 1 more\)",
        ):
            FMoWSentinel(root, 'train')
        with pytest.warns(UserWarning, match=r'skipped 2 of 6 entries'):
            ds = FMoWSentinel(root, 'train', on_error='skip')
        assert len(ds) == 4
        assert [os.path.basename(f) for f in ds.files] == [
            'airport_0_0.tif',
            'airport_0_100.tif',
            'airport_1_0.tif',
            'crop_field_2_101.tif',
        ]


class TestRealChips:
    """Real Sentinel-2 L1C chips (crop fields, a town, open water)."""

    def test_spectra(self) -> None:
        ds = FMoWSentinel(REAL, 'train')
        assert len(ds) == 4
        assert [ds.classes[label] for label in ds.labels] == [
            'crop_field',
            'crop_field',
            'single-unit_residential',
            'lake_or_pond',
        ]
        red = ds.bands.index('B4')
        nir = ds.bands.index('B8')
        swir = ds.bands.index('B11')
        ndvi = []
        for i in range(4):
            image = ds[i]['image']
            assert image.shape == (10, 48, 48)
            ndvi.append(
                ((image[nir] - image[red]) / (image[nir] + image[red])).mean().item()
            )
        # Vegetated land is bright in the near infrared, water is dark in it and in
        # the short-wave infrared.
        assert min(ndvi[:3]) > 0.3
        assert ndvi[3] < -0.3
        water = ds[3]['image']
        assert water[nir].mean() < 400 and water[swir].mean() < 150
        assert ds[0]['image'][nir].mean() > 1500

    def test_satmae_normalization(self) -> None:
        raw = FMoWSentinel(REAL, 'train', bands=FMoWSentinel.all_bands)
        ds = FMoWSentinel(
            REAL, 'train', bands=FMoWSentinel.all_bands, normalization='satmae', size=96
        )
        image = ds[0]['image']
        assert image.shape == (13, 96, 96)
        mean = torch.tensor(MEAN).view(-1, 1, 1)
        std = torch.tensor(STD).view(-1, 1, 1)
        scaled = ((raw[0]['image'] - (mean - 2 * std)) / (4 * std)).clamp(0, 1)
        expected, _ = resize_and_center_crop(scaled, 96)
        assert torch.allclose(image, expected, atol=1e-3)
        # Real L1C values fall inside mean +- 2 std for most pixels.
        assert ((image > 0) & (image < 1)).float().mean() > 0.9

    def test_chips_are_windows_of_the_demo_asset(self) -> None:
        asset = os.path.join('explora_geo', 'assets', 's2_virginia_13band.tif')
        assert os.path.getsize(asset) < 5_000_000
        with rasterio.open(asset) as src:
            assert src.count == 13 and src.dtypes[0] == 'uint16'
            assert src.descriptions == FMoWSentinel.all_bands
            assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
            assert (src.width, src.height) == (512, 512)
            assert src.compression is not None and src.compression.value == 'DEFLATE'
            scene = src.read()
            ds = FMoWSentinel(REAL, 'train', bands=FMoWSentinel.all_bands)
            for i in range(len(ds)):
                with rasterio.open(ds.files[i]) as chip:
                    col, row = ~src.transform @ (chip.transform.c, chip.transform.f)
                    c, r = round(col), round(row)
                    window = scene[:, r : r + 48, c : c + 48]
                assert torch.equal(
                    ds[i]['image'], torch.from_numpy(window.astype(np.float32))
                )
