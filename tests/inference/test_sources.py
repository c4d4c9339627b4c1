"""Sentinel-2 products as delivered: band files, SAFE folders, STAC items, VRTs."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window
from torch import Tensor, nn

from explora_geo.inference.sources import (
    band_key,
    band_name_from_path,
    open_source,
    product_band_files,
)
from explora_geo.inference.tiles import predict_raster
from explora_geo.sensors import SENTINEL2, InputSpec

DATA = Path(__file__).parents[1] / 'data' / 's2_bands'
FILES = sorted(DATA.glob('*.jp2'))
ALL = list(range(13))


def test_band_names() -> None:
    assert band_name_from_path('T18SVH_20170101T000000_B01.jp2') == 'B1'
    assert band_name_from_path('T18SVH_20200101T155511_B8A_20m.jp2') == 'B8A'
    assert band_name_from_path('s2_B12.tif') == 'B12'
    assert band_name_from_path('S2B_MSIL1C_TCI.jp2') is None
    assert band_key('B01') == band_key('b1') == 'b1' != band_key('B8A')


def write_layout(path: Path, data: np.ndarray, **options: object) -> None:
    profile = {
        'driver': 'GTiff',
        'count': data.shape[0],
        'height': data.shape[1],
        'width': data.shape[2],
        'dtype': str(data.dtype),
        'crs': 'EPSG:32618',
        'transform': rasterio.transform.from_origin(500000, 4000000, 10, 10),
    }
    with rasterio.open(path, 'w', **(profile | options)) as dst:
        dst.write(data)


def test_pixel_interleaved_sources(tmp_path: Path) -> None:
    """Only every band, in order, of an uncompressed pixel-interleaved GeoTIFF."""
    data = np.arange(4 * 30 * 20, dtype=np.uint16).reshape(4, 30, 20)
    layouts: dict[str, tuple[dict[str, Any], bool]] = {
        'pixel.tif': ({'interleave': 'pixel'}, True),
        'tiled.tif': ({'interleave': 'pixel', 'tiled': True}, True),
        'band.tif': ({'interleave': 'band'}, False),
        'deflate.tif': ({'interleave': 'pixel', 'compress': 'deflate'}, False),
    }
    for name, (options, expected) in layouts.items():
        write_layout(tmp_path / name, data, **options)
        with open_source(tmp_path / name) as source:
            assert source.pixel_interleaved([0, 1, 2, 3]) is expected, name
            assert not source.pixel_interleaved([0, 1, 2])
            assert not source.pixel_interleaved([1, 0, 2, 3])
            # Any layout reads into any strides.
            out = np.empty((20, 12, 4), np.uint16).transpose(2, 0, 1)
            got = source.read([0, 1, 2, 3], Window(3, 5, 12, 20), out=out)
            assert got is out
            np.testing.assert_array_equal(out, data[:, 5:25, 3:15])
    write_layout(tmp_path / 'one.tif', data[:1])
    with open_source(tmp_path / 'one.tif') as source:
        assert not source.pixel_interleaved([0])
    with open_source(FILES) as source:
        assert not source.pixel_interleaved(ALL)


def test_band_files_on_one_grid() -> None:
    with open_source(DATA) as source:
        assert sorted(source.names, key=SENTINEL2.bands.index) == list(SENTINEL2.bands)
        assert (source.height, source.width) == (192, 160)
        with rasterio.open(DATA / 'T18SVH_20170101T000000_B02.jp2') as b02:
            assert source.transform == b02.transform and source.crs == b02.crs
            position = source.names.index('B2')
            window = Window(0, 0, 160, 192)
            np.testing.assert_array_equal(
                source.read([position], window)[0], b02.read(1)
            )
        # A 20 m band is resampled onto the 10 m grid as GDAL's bilinear warp does.
        with rasterio.open(DATA / 'T18SVH_20170101T000000_B05.jp2') as b05:
            expected = np.zeros((192, 160), np.uint16)
            reproject(
                b05.read(1),
                expected,
                src_transform=b05.transform,
                src_crs=b05.crs,
                dst_transform=source.transform,
                dst_crs=source.crs,
                resampling=Resampling.bilinear,
            )
        got = source.read([source.names.index('B5')], Window(0, 0, 160, 192))[0]
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        assert source.valid(ALL, Window(0, 0, 160, 192)).all()
        # Windows read on their own match the whole read.
        np.testing.assert_array_equal(
            source.read(ALL, Window(40, 50, 30, 20)),
            source.read(ALL, Window(0, 0, 160, 192))[:, 50:70, 40:70],
        )


def make_safe(root: Path, level: str) -> Path:
    safe = (
        root / f'S2A_MSI{level}_20170101T000000_N0204_R000_T18SVH_20170101T000000.SAFE'
    )
    granule = safe / 'GRANULE' / 'L1C_T18SVH_A000000_20170101T000000' / 'IMG_DATA'
    for path in FILES:
        band = path.stem.rsplit('_', 1)[1]
        if level == 'L1C':
            target = granule / path.name
        else:
            with rasterio.open(path) as src:
                res = int(src.res[0])
            target = granule / f'R{res}m' / f'{path.stem}_{res}m.jp2'
            # L2A also holds coarser copies of fine bands, and no B10.
            if band == 'B10':
                continue
            if res == 10:
                coarse = granule / 'R20m' / f'{path.stem}_20m.jp2'
                coarse.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(DATA / 'T18SVH_20170101T000000_B05.jp2', coarse)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (granule.parent / 'QI_DATA').mkdir()
    (granule / 'T18SVH_20170101T000000_TCI.jp2').write_bytes(b'')
    return safe


@pytest.mark.parametrize('level', ['L1C', 'L2A'])
def test_safe_folder(tmp_path: Path, level: str) -> None:
    safe = make_safe(tmp_path, level)
    files = product_band_files(safe)
    assert len(files) == (13 if level == 'L1C' else 12)
    # The finest copy of each band.
    assert files['B2'].name.endswith('B02.jp2' if level == 'L1C' else 'B02_10m.jp2')
    with open_source(safe) as source, open_source(DATA) as reference:
        assert (source.height, source.width) == (192, 160)
        for name in source.names:
            np.testing.assert_array_equal(
                source.read([source.names.index(name)], Window(0, 0, 160, 192)),
                reference.read([reference.names.index(name)], Window(0, 0, 160, 192)),
            )


def test_stac_item_band_list_and_vrt(tmp_path: Path) -> None:
    window = Window(0, 0, 160, 192)
    with open_source(DATA) as reference:
        expected = {
            n: reference.read([i], window) for i, n in enumerate(reference.names)
        }
    with open_source(DATA / 'item.json') as source:
        assert source.names[0] == 'B01'
        np.testing.assert_array_equal(source.read([0], window), expected['B1'])
    with open_source([DATA / 'T18SVH_20170101T000000_B04.jp2', FILES[0]]) as source:
        assert source.names == ['B4', 'B1']
        np.testing.assert_array_equal(source.read([1], window), expected['B1'])
    # A VRT stacking the 10 m bands, with band descriptions.
    bands = ''.join(
        f'<VRTRasterBand dataType="UInt16" band="{i}"><Description>{b}</Description>'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{DATA / f"T18SVH_20170101T000000_{b}.jp2"}'
        '</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
        for i, b in enumerate(['B02', 'B03', 'B04', 'B08'], start=1)
    )
    with rasterio.open(DATA / 'T18SVH_20170101T000000_B02.jp2') as ref:
        geo = ', '.join(str(v) for v in ref.transform.to_gdal())
        crs = ref.crs.to_wkt()
    (tmp_path / 'stack.vrt').write_text(
        f'<VRTDataset rasterXSize="160" rasterYSize="192"><SRS>{crs}</SRS>'
        f'<GeoTransform>{geo}</GeoTransform>{bands}</VRTDataset>'
    )
    with open_source(tmp_path / 'stack.vrt') as source:
        assert source.names == ['B02', 'B03', 'B04', 'B08']
        np.testing.assert_array_equal(source.read([3], window), expected['B8'])


def test_errors(tmp_path: Path) -> None:
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match=r'empty: no band files found'):
        open_source(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='missing.tif: no such file'):
        open_source(tmp_path / 'missing.tif')
    item = json.loads((DATA / 'item.json').read_text())
    item['assets']['B01']['href'] = 'https://example.com/B01.jp2'
    (tmp_path / 'remote.json').write_text(json.dumps(item))
    with pytest.raises(ValueError, match="asset 'B01' is remote"):
        open_source(tmp_path / 'remote.json')
    with pytest.raises(ValueError, match='form one product only if'):
        open_source([FILES[0], FILES[0]])


class Mean(nn.Module):
    """Two-class per-pixel logits from the mean of the bands."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=1, keepdim=True) - 0.4
        return torch.cat([-m, m], dim=1)


def test_predict_on_band_files_with_13_band_model(tmp_path: Path) -> None:
    spec = InputSpec(
        normalization=SENTINEL2.normalization('satmae'), img_size=64, patch_size=16
    )
    result = predict_raster(Mean(), DATA, tmp_path / 'pred.tif', spec=spec)
    assert result.kind == 'segmentation' and result.output == 'classes'
    with rasterio.open(tmp_path / 'pred.tif') as dst, open_source(DATA) as source:
        assert dst.transform == source.transform and dst.crs == source.crs
        assert dst.shape == (192, 160)
        raw = source.read(
            [source.names.index(b) for b in SENTINEL2.bands], Window(0, 0, 160, 192)
        )
        x = SENTINEL2.normalization('satmae')(torch.from_numpy(raw.astype(np.float32)))
        expected = (x.mean(0) > 0.4).numpy().astype(np.uint8)
        np.testing.assert_array_equal(dst.read(1), expected)
