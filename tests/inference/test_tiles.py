import importlib.util
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import Tensor, nn

from explora_geo.inference.tiles import TileGrid, blend_weights, predict_raster
from explora_geo.inference.writers import atomic_path, polygonize
from explora_geo.tasks.classification import ClassificationTask
from explora_geo.tasks.segmentation import SemanticSegmentationTask

BANDS = ['B02', 'B03', 'B04', 'B08']
TRANSFORM = from_origin(500_000, 4_170_000, 10, 10)


def write_raster(
    path: Path, height: int = 70, width: int = 53, nodata: int | None = None
) -> np.ndarray:
    """A 4-band uint16 UTM GeoTIFF with band names, like a Sentinel-2 10 m stack."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 3000, (4, height, width)).astype(np.uint16)
    if nodata is not None:
        data[:, :10, :7] = nodata
    profile = {
        'driver': 'GTiff',
        'height': height,
        'width': width,
        'count': 4,
        'dtype': 'uint16',
        'crs': 'EPSG:32618',
        'transform': TRANSFORM,
        'nodata': nodata,
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)
    return data


class Pointwise(nn.Module):
    """Each output pixel is a function of the same input pixel only."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([x[:, 0] * 0.5 + x[:, 1], x[:, 2] - 7.0], dim=1)


class TileMean(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class Threshold(nn.Module):
    """Two-class logits: class 1 where band 1 exceeds 1500."""

    def forward(self, x: Tensor) -> Tensor:
        score = (x[:, :1] - 1500) / 100
        return torch.cat([-score, score], dim=1)


@pytest.mark.parametrize(
    ('height', 'width', 'size', 'overlap'),
    [(70, 53, 16, 4), (16, 16, 16, 0), (5, 40, 16, 8), (100, 100, 32, 31)],
)
def test_grid_covers_every_pixel(
    height: int, width: int, size: int, overlap: int
) -> None:
    grid = TileGrid(height, width, size, overlap)
    covered = np.zeros((height, width), int)
    for r in range(grid.rows):
        for c in range(grid.cols):
            w = grid.window(r, c)
            assert w.height == w.width == size
            covered[w.row_off : w.row_off + size, w.col_off : w.col_off + size] += 1
            # Every tile adds pixels that the previous tiles did not cover.
            assert w.row_off < height and w.col_off < width
    assert covered.min() >= 1
    stride = size - overlap
    assert grid.rows == max(1, math.ceil((height - overlap) / stride))
    assert len(grid) == grid.rows * grid.cols


def test_grid_validation() -> None:
    with pytest.raises(
        ValueError, match=r'overlap must be in \[0, tile_size=8\), got 8'
    ):
        TileGrid(10, 10, 8, 8)


@pytest.mark.parametrize('kind', ['cosine', 'linear'])
def test_blend_weights(kind: str) -> None:
    w = blend_weights(16, 4, kind)  # type: ignore[arg-type]
    assert w.shape == (16, 16) and w.dtype == np.float32
    assert (w > 0).all() and w.max() == 1
    np.testing.assert_array_equal(w[4:12, 4:12], 1)
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    ramp = np.array([0.5, 1.5, 2.5, 3.5]) / 4
    expected = 0.5 - 0.5 * np.cos(np.pi * ramp) if kind == 'cosine' else ramp
    np.testing.assert_allclose(w[8, :4], expected, rtol=1e-6)
    np.testing.assert_array_equal(blend_weights(8, 4, 'uniform'), 1)
    with pytest.raises(ValueError, match="got 'gauss'"):
        blend_weights(8, 2, 'gauss')  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ('size', 'overlap', 'blend', 'batch'),
    [
        (16, 4, 'cosine', 3),
        (32, 0, 'uniform', 8),
        (24, 12, 'linear', 1),
        (128, 16, 'cosine', 2),
    ],
)
def test_segmentation_blend_reproduces_pointwise_model(
    tmp_path: Path, size: int, overlap: int, blend: str, batch: int
) -> None:
    data = write_raster(tmp_path / 'in.tif').astype(np.float32)
    out = tmp_path / 'out.tif'
    result = predict_raster(
        Pointwise(),
        tmp_path / 'in.tif',
        out,
        tile_size=size,
        overlap=overlap,
        batch_size=batch,
        blend=blend,  # type: ignore[arg-type]
        output='scores',
        activation='none',
        normalize=False,
    )
    assert result.kind == 'segmentation' and result.num_outputs == 2
    expected = np.stack([data[0] * 0.5 + data[1], data[2] - 7.0])
    with rasterio.open(out) as dst, rasterio.open(tmp_path / 'in.tif') as src:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.shape == src.shape and dst.count == 2 and dst.dtypes[0] == 'float32'
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        np.testing.assert_allclose(dst.read(), expected, rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.tif', 'out.tif']


def test_band_selection_and_normalize(tmp_path: Path) -> None:
    data = write_raster(tmp_path / 'in.tif').astype(np.float32)
    mean, std = [100.0, 200.0, 300.0], [2.0, 4.0, 8.0]
    predict_raster(
        Pointwise(),
        tmp_path / 'in.tif',
        tmp_path / 'out.tif',
        bands=['b08', 2, 'B02'],  # names match case-insensitively; ints are 1-based
        tile_size=16,
        overlap=4,
        normalize=(mean, std),
        output='scores',
        activation='none',
        cog=False,
    )
    x = (data[[3, 1, 0]] - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    with rasterio.open(tmp_path / 'out.tif') as dst:
        assert dst.tags(ns='IMAGE_STRUCTURE').get('LAYOUT') != 'COG'
        np.testing.assert_allclose(dst.read(1), x[0] * 0.5 + x[1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dst.read(2), x[2] - 7.0, rtol=1e-5, atol=1e-5)


def test_missing_band(tmp_path: Path) -> None:
    write_raster(tmp_path / 'in.tif')
    with pytest.raises(ValueError, match=r"band 'B11' not found in .*in\.tif.*'B08'"):
        predict_raster(
            TileMean(), tmp_path / 'in.tif', tmp_path / 'o.tif', bands=['B11']
        )
    with pytest.raises(
        ValueError, match=r'band index 5 not found in .*in\.tif: it has 4'
    ):
        predict_raster(TileMean(), tmp_path / 'in.tif', tmp_path / 'o.tif', bands=[5])
    with pytest.raises(ValueError, match='one mean and one std per band'):
        predict_raster(
            TileMean(), tmp_path / 'in.tif', tmp_path / 'o.tif', normalize=([0], [1])
        )
    assert not (tmp_path / 'o.tif').exists()


@pytest.mark.parametrize(('size', 'overlap'), [(16, 4), (96, 8)])
def test_classification_one_pixel_per_tile(
    tmp_path: Path, size: int, overlap: int
) -> None:
    data = write_raster(tmp_path / 'in.tif').astype(np.float32)
    result = predict_raster(
        TileMean(),
        tmp_path / 'in.tif',
        tmp_path / 'out.tif',
        tile_size=size,
        overlap=overlap,
        batch_size=5,
        activation='none',
        labels=BANDS,
        normalize=False,
    )
    assert result.kind == 'classification' and result.output == 'scores'
    grid = TileGrid(70, 53, size, overlap)
    stride = size - overlap
    padded = np.pad(
        data,
        (
            (0, 0),
            (0, (grid.rows - 1) * stride + size - 70),
            (0, (grid.cols - 1) * stride + size - 53),
        ),
        mode='reflect',
    )
    with rasterio.open(tmp_path / 'out.tif') as dst:
        assert dst.shape == (grid.rows, grid.cols)
        # Pixel (r, c) is the stride-sized core of tile (r, c).
        core = rasterio.Affine.translation(overlap / 2, overlap / 2)
        assert dst.transform == TRANSFORM @ core @ rasterio.Affine.scale(stride)
        assert dst.descriptions == tuple(BANDS)
        out = dst.read()
    for r in range(grid.rows):
        for c in range(grid.cols):
            y, x = r * stride, c * stride
            tile = padded[:, y : y + size, x : x + size]
            np.testing.assert_allclose(out[:, r, c], tile.mean(axis=(1, 2)), rtol=1e-5)


def test_nodata(tmp_path: Path) -> None:
    write_raster(tmp_path / 'in.tif', nodata=0)
    seen = []

    class Recording(Pointwise):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.clone())
            return super().forward(x)

    predict_raster(
        Recording(),
        tmp_path / 'in.tif',
        tmp_path / 'out.tif',
        tile_size=16,
        overlap=4,
        normalize=([1000.0] * 4, [10.0] * 4),
        output='scores',
        activation='none',
    )
    # Nodata input pixels reach the model as 0 after normalisation.
    assert torch.all(seen[0][0, :, :10, :7] == 0)
    assert torch.all(seen[0][0, :, 10:, :] != 0)
    with rasterio.open(tmp_path / 'out.tif') as dst:
        out = dst.read(1)
    assert np.isnan(out[:10, :7]).all()
    assert np.isfinite(out[10:]).all() and np.isfinite(out[:, 7:]).all()


def test_class_map_and_polygons(tmp_path: Path) -> None:
    data = write_raster(tmp_path / 'in.tif')
    result = predict_raster(
        Threshold(),
        tmp_path / 'in.tif',
        tmp_path / 'classes.tif',
        tile_size=16,
        overlap=4,
        vector_path=tmp_path / 'classes.gpkg',
        labels=['low', 'high'],
        normalize=False,
    )
    assert result.output == 'classes'
    expected = (data[0] > 1500).astype(np.uint8)
    with rasterio.open(tmp_path / 'classes.tif') as dst:
        assert dst.dtypes[0] == 'uint8' and dst.nodata == 255
        np.testing.assert_array_equal(dst.read(1), expected)
    frame = gpd.read_file(tmp_path / 'classes.gpkg')
    assert frame.crs.to_epsg() == 32618
    assert set(frame['label']) == {'low', 'high'}
    for value in (0, 1):
        area = frame.loc[frame['class'] == value].area.sum()
        assert area == pytest.approx((expected == value).sum() * 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'classes.gpkg',
        'classes.tif',
        'in.tif',
    ]


def test_polygonize_merges_across_blocks(tmp_path: Path) -> None:
    write_raster(tmp_path / 'in.tif')
    predict_raster(
        Threshold(),
        tmp_path / 'in.tif',
        tmp_path / 'c.tif',
        tile_size=32,
        overlap=8,
        normalize=False,
    )
    whole = polygonize(tmp_path / 'c.tif', block_rows=1000)
    blocks = polygonize(tmp_path / 'c.tif', block_rows=7)
    assert len(blocks) == len(whole)
    for frame in (whole, blocks):
        frame['key'] = [
            (c, round(g.area), tuple(np.round(g.bounds, 6)))
            for c, g in zip(frame['class'], frame.geometry, strict=True)
        ]
    assert sorted(blocks['key']) == sorted(whole['key'])


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    write_raster(tmp_path / 'in.tif')

    class Failing(Pointwise):
        calls = 0

        def forward(self, x: Tensor) -> Tensor:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError('out of memory')
            return super().forward(x)

    with pytest.raises(RuntimeError, match='out of memory'):
        predict_raster(
            Failing(),
            tmp_path / 'in.tif',
            tmp_path / 'out.tif',
            tile_size=16,
            batch_size=2,
            vector_path=tmp_path / 'out.gpkg',
        )
    with pytest.raises(
        ValueError,
        match=r"o\.shp: unsupported vector format '.shp'; use one of \['.fgb'",
    ):
        predict_raster(
            Threshold(), tmp_path / 'in.tif', tmp_path / 'o.tif', vector_path='o.shp'
        )
    with pytest.raises(ValueError, match='polygons need a one-band class map'):
        predict_raster(
            Threshold(),
            tmp_path / 'in.tif',
            tmp_path / 'o.tif',
            output='scores',
            vector_path=tmp_path / 'o.gpkg',
        )
    with pytest.raises(ValueError, match='would overwrite the input'):
        predict_raster(Threshold(), tmp_path / 'in.tif', tmp_path / 'in.tif')
    with pytest.raises(
        ValueError, match=r'model output \(16, 4, 8, 8\) is neither \(B, C\)'
    ):
        predict_raster(
            nn.AvgPool2d(2),
            tmp_path / 'in.tif',
            tmp_path / 'o.tif',
            tile_size=16,
            batch_size=16,
        )
    assert [p.name for p in tmp_path.iterdir()] == ['in.tif']


def test_atomic_path_keeps_existing_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / 'result.tif'
    target.write_bytes(b'previous')
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_bytes(b'partial')
        raise KeyError('boom')
    assert target.read_bytes() == b'previous'
    assert [p.name for p in tmp_path.iterdir()] == ['result.tif']


def test_torchgeo_tasks(tmp_path: Path) -> None:
    write_raster(tmp_path / 'in.tif', height=40, width=40)
    tiny = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 32}
    torch.manual_seed(0)
    segmenter = SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        in_channels=4,
        num_classes=3,
        labels=['water', 'field', 'forest'],
        decoder_channels=16,
        model_kwargs=tiny,
    )
    segmenter.train()
    result = predict_raster(
        segmenter,
        tmp_path / 'in.tif',
        tmp_path / 'seg.tif',
        tile_size=32,
        overlap=8,
        normalize=([1500.0] * 4, [800.0] * 4),
        output='scores',
        score_dtype='float32',
    )
    assert segmenter.training  # restored
    with rasterio.open(tmp_path / 'seg.tif') as dst:
        assert dst.descriptions == ('water', 'field', 'forest')
        # Softmax (the task is multiclass): probabilities sum to one.
        np.testing.assert_allclose(dst.read().sum(0), 1, rtol=1e-5)
        float_scores = dst.read()
    # Default score encoding: uint8, probability x 254, with the band scale.
    predict_raster(
        segmenter,
        tmp_path / 'in.tif',
        tmp_path / 'seg8.tif',
        tile_size=32,
        overlap=8,
        normalize=([1500.0] * 4, [800.0] * 4),
        output='scores',
    )
    with rasterio.open(tmp_path / 'seg8.tif') as dst:
        assert dst.dtypes[0] == 'uint8' and dst.nodata == 255
        assert dst.scales == (1 / 254,) * 3
        np.testing.assert_array_equal(dst.read(), np.rint(float_scores * 254))
    assert result.num_tiles == 4
    classifier = ClassificationTask(
        model='explora_vitb_dino', in_channels=4, num_classes=5, model_kwargs=tiny
    )
    result = predict_raster(
        classifier,
        tmp_path / 'in.tif',
        tmp_path / 'cls.tif',
        tile_size=32,
        normalize=([1500.0] * 4, [800.0] * 4),
        score_dtype='float32',
    )
    assert result.kind == 'classification'
    with rasterio.open(tmp_path / 'cls.tif') as dst:
        # Classifiers tile without overlap by default.
        assert dst.shape == (2, 2) and dst.count == 5
        np.testing.assert_allclose(dst.read().sum(0), 1, rtol=1e-5)


def test_geoparquet_polygons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_raster(tmp_path / 'in.tif')
    calls = []

    class Counting(Threshold):
        def forward(self, x: Tensor) -> Tensor:
            calls.append(1)
            return super().forward(x)

    args = (Counting(), tmp_path / 'in.tif', tmp_path / 'c.tif')
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        'find_spec',
        lambda name, *a: None if name == 'pyarrow' else real_find_spec(name, *a),
    )
    # Refused before any tile is predicted.
    with pytest.raises(
        ImportError,
        match=r"c\.parquet: writing GeoParquet needs pyarrow \(pip install 'explora-geo\[geoparquet\]'",
    ):
        predict_raster(*args, tile_size=16, vector_path=tmp_path / 'c.parquet')
    assert not calls and [p.name for p in tmp_path.iterdir()] == ['in.tif']
    monkeypatch.undo()
    predict_raster(
        *args, tile_size=16, vector_path=tmp_path / 'c.parquet', normalize=False
    )
    frame = gpd.read_parquet(tmp_path / 'c.parquet')
    assert frame.crs.to_epsg() == 32618
    assert frame.area.sum() == pytest.approx(data[0].size * 100)


def test_geoparquet_extra_is_declared() -> None:
    pyproject = Path(__file__).parents[2] / 'pyproject.toml'
    import tomllib

    extras = tomllib.loads(pyproject.read_text())['project']['optional-dependencies']
    assert any(d.startswith('pyarrow') for d in extras['geoparquet'])
