"""The tile pipeline's buffers, encoders and output compression."""

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch import Tensor, nn

import explora_geo.inference.tiles as tiles_module
import explora_geo.precision as precision_module
from explora_geo.inference.sources import open_source
from explora_geo.inference.tiles import (
    TileGrid,
    _argmax,
    _convert,
    _host_rows,
    _Layout,
    _Sink,
    default_batch_size,
    default_readers,
    predict_raster,
)
from explora_geo.inference.writers import final_copy
from explora_geo.sensors import Normalization

from .test_sources import write_layout
from .test_tiles import Pointwise, Threshold, write_raster


def test_argmax_matches_numpy_including_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (5, 40, 30)).astype(np.float32)  # many ties
    index = _argmax(torch.from_numpy(scores), 'uint8')
    assert index.dtype == torch.uint8
    np.testing.assert_array_equal(index.numpy(), scores.argmax(axis=0))
    scores = rng.random((300, 4, 5)).astype(np.float32)
    index = _argmax(torch.from_numpy(scores), 'uint16')
    np.testing.assert_array_equal(index.numpy(), scores.argmax(axis=0))
    # uint16 class maps are computed in int32 and cast on the host.
    host = _host_rows(index, 'uint16')
    assert host.dtype == np.uint16
    np.testing.assert_array_equal(host, scores.argmax(axis=0))


@pytest.mark.parametrize('masked', [False, True])
def test_pixel_normalisations_run_tile_by_tile_with_the_same_values(
    masked: bool,
) -> None:
    rng = np.random.default_rng(1)
    raw = torch.from_numpy(rng.integers(0, 4000, (3, 5, 8, 8)).astype(np.uint16))
    valid = torch.from_numpy(rng.random((3, 8, 8)) > 0.3) if masked else None
    norm = Normalization(
        kind='standard',
        bands=('B2', 'B3', 'B4', 'B8', 'B11'),
        mean=(900.0, 1100.0, 1200.0, 2500.0, 2000.0),
        std=(300.0, 310.0, 420.0, 800.0, 700.0),
    )
    pixel_norm = tiles_module._normalizer(norm, 5, torch.device('cpu'))
    # Any view of the raw tiles, as a pixel-interleaved raster gives them.
    pixel = raw.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    x = _convert(torch.empty(3, 5, 8, 8), pixel, valid, pixel_norm)
    expected = norm(raw.float())
    if valid is not None:
        expected = expected.masked_fill(~valid[:, None], 0)
    assert torch.equal(x, expected)  # bit for bit: the same arithmetic
    calls: list[tuple[int, ...]] = []

    def batchwise(t: Tensor) -> Tensor:
        calls.append(tuple(t.shape))
        return t.sub_(1000)

    y = _convert(torch.empty(3, 5, 8, 8), pixel, valid, batchwise)
    # A user's callable is applied to each batch, as documented.
    assert calls == [(3, 5, 8, 8)]
    expected = raw.float() - 1000
    if valid is not None:
        expected = expected.masked_fill(~valid[:, None], 0)
    assert torch.equal(y, expected)


def test_sink_moves_only_rows_with_data() -> None:
    # Tiles of 16 px every 12 px: each released strip leaves 4 rows of overlap.
    grid = TileGrid(40, 30, 16, 4)
    layout = _Layout('segmentation', 'scores', 'none', 2, 'float32')
    sink = _Sink(grid, layout, 'uniform', 0)
    rng = np.random.default_rng(0)
    total = np.zeros((2, 40, 30), np.float32)
    count = np.zeros((40, 30), np.float32)
    written = np.full((2, 40, 30), np.nan, np.float32)
    for row in range(grid.rows):
        for col in range(grid.cols):
            scores = rng.random((2, 16, 16)).astype(np.float32)
            y, x = row * grid.stride, col * grid.stride
            h, w = min(16, 40 - y), min(16, 30 - x)
            total[:, y : y + h, x : x + w] += scores[:, :h, :w]
            count[y : y + h, x : x + w] += 1
            sink.add(row, col, torch.from_numpy(scores), None)
        rows = sink.take(row + 1)
        assert rows is not None
        written[:, rows.top : rows.until] = _host_rows(rows.encode(), 'float32')
        sink.release(rows)
        # Beyond the overlap carried to the next strip, the buffer is all zero.
        assert sink.filled <= grid.overlap
        assert not sink.sums[:, sink.filled :].any()
        assert not sink.norm[sink.filled :].any()
    np.testing.assert_allclose(written, total / count, rtol=1e-6)


def test_sink_release_moves_overlapping_rows() -> None:
    # Overlap larger than the stride: the rows kept overlap the rows dropped.
    grid = TileGrid(30, 8, 16, 12)
    layout = _Layout('segmentation', 'scores', 'none', 1, 'float32')
    sink = _Sink(grid, layout, 'uniform', 0)
    total = np.zeros((1, 30, 8), np.float32)
    count = np.zeros((30, 8), np.float32)
    written = np.full((1, 30, 8), np.nan, np.float32)
    rng = np.random.default_rng(1)
    for row in range(grid.rows):
        scores = rng.random((1, 16, 16)).astype(np.float32)
        y = row * grid.stride
        h = min(16, 30 - y)
        total[:, y : y + h] += scores[:, :h, :8]
        count[y : y + h] += 1
        sink.add(row, 0, torch.from_numpy(scores), None)
        rows = sink.take(row + 1)
        if rows is not None:
            written[:, rows.top : rows.until] = _host_rows(rows.encode(), 'float32')
            sink.release(rows)
    np.testing.assert_allclose(written, total / count, rtol=1e-6)


def test_read_into_given_array(tmp_path: Path) -> None:
    data = write_raster(tmp_path / 'in.tif')
    # The same bands as two files: reads are grouped per file.
    for i, name in enumerate(('B02', 'B03'), start=1):
        profile = {
            'driver': 'GTiff',
            'height': data.shape[1],
            'width': data.shape[2],
            'count': 1,
            'dtype': 'uint16',
            'crs': 'EPSG:32618',
            'transform': from_origin(500_000, 4_170_000, 10, 10),
        }
        with rasterio.open(tmp_path / f'T_{name}.tif', 'w', **profile) as dst:
            dst.write(data[i - 1 : i])
    window = Window(3, 5, 16, 12)
    for source_path, positions, expected in (
        (tmp_path / 'in.tif', [3, 0, 1], data[[3, 0, 1], 5:17, 3:19]),
        (
            [tmp_path / 'T_B02.tif', tmp_path / 'T_B03.tif'],
            [1, 0],
            data[[1, 0], 5:17, 3:19],
        ),
    ):
        with open_source(source_path) as source:
            out = np.zeros((len(positions), 12, 16), np.uint16)
            assert source.read(positions, window, out=out) is out
            np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(source.read(positions, window), expected)
            with pytest.raises(ValueError, match=r'out must be a \(3, 12, 16\) uint16'):
                source.read([0, 1, 2], window, out=np.zeros((3, 12, 16), np.float32))


class Recorder(nn.Module):
    """Pointwise logits; records where each input batch lives."""

    def __init__(self) -> None:
        super().__init__()
        self.pointers: list[int] = []
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.pointers.append(x.data_ptr())
        self.batch_sizes.append(len(x))
        return Pointwise()(x)


def test_input_buffers_are_reused_and_results_unchanged(tmp_path: Path) -> None:
    data = write_raster(tmp_path / 'in.tif', height=120, width=100).astype(np.float32)
    model = Recorder()
    predict_raster(
        model,
        tmp_path / 'in.tif',
        tmp_path / 'out.tif',
        tile_size=16,
        overlap=4,
        batch_size=2,
        output='scores',
        activation='none',
        normalize=([100.0] * 4, [10.0] * 4),
    )
    batches = -(-len(TileGrid(120, 100, 16, 4)) // 2)
    assert len(model.pointers) == batches > 30
    # A fixed set of buffers, not one allocation per batch.
    assert len(set(model.pointers)) <= 6
    x = (data - 100) / 10
    with rasterio.open(tmp_path / 'out.tif') as dst:
        np.testing.assert_allclose(dst.read(1), x[0] * 0.5 + x[1], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dst.read(2), x[2] - 7.0, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('cog', [True, False])
def test_compression_choices_keep_pixels(tmp_path: Path, cog: bool) -> None:
    write_raster(tmp_path / 'in.tif')
    outputs = {}
    for compress in ('deflate', 'zstd', 'none'):
        out = tmp_path / f'{compress}.tif'
        predict_raster(
            Threshold(),
            tmp_path / 'in.tif',
            out,
            tile_size=16,
            overlap=4,
            normalize=False,
            cog=cog,
            compress=compress,
        )
        with rasterio.open(out) as dst:
            structure = dst.tags(ns='IMAGE_STRUCTURE')
            outputs[compress] = dst.read()
            if compress == 'none':
                assert 'COMPRESSION' not in structure
            else:
                assert structure['COMPRESSION'] == compress.upper()
                assert structure['PREDICTOR'] == '2'  # horizontal differencing
    np.testing.assert_array_equal(outputs['deflate'], outputs['zstd'])
    np.testing.assert_array_equal(outputs['deflate'], outputs['none'])
    with pytest.raises(ValueError, match=r"compress must be one of .*got 'jpeg'"):
        predict_raster(
            Threshold(),
            tmp_path / 'in.tif',
            tmp_path / 'bad.tif',
            normalize=False,
            compress='jpeg',  # type: ignore[arg-type]
        )
    assert not (tmp_path / 'bad.tif').exists()


def test_compression_levels(tmp_path: Path) -> None:
    """The level reaches GDAL; None is the fastest level; bad levels are refused."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:256, :256]
    smooth = (np.sin(x / 9.0) + np.cos(y / 13.0)) * 60 + 127
    data = (smooth[None] + rng.normal(0, 4, (4, 256, 256))).clip(0, 254)
    src = tmp_path / 'work.tif'
    write_layout(src, data.astype(np.uint8), tiled=True)
    sizes = {}
    levels = {'deflate': (1, None, 9), 'zstd': (1, None, 19)}
    for compress, level in [(c, v) for c, vs in levels.items() for v in vs]:
        out = tmp_path / f'{compress}-{level}.tif'
        final_copy(src, out, True, 'AVERAGE', compress, level)
        sizes[compress, level] = out.stat().st_size
        with rasterio.open(out) as a, rasterio.open(src) as b:
            np.testing.assert_array_equal(a.read(), b.read())
        if level is None:
            assert out.read_bytes() == (tmp_path / f'{compress}-1.tif').read_bytes()
    for compress, best in (('deflate', 9), ('zstd', 19)):
        assert sizes[compress, best] < sizes[compress, 1], sizes
    for compress, level, message in (
        ('lzw', 2, r"compress 'lzw' has no levels \(got compress_level=2\)"),
        ('none', 1, r"compress 'none' has no levels"),
        ('deflate', 0, r"'deflate' must be an integer from 1 to 12, got 0"),
        ('deflate', 13, r'from 1 to 12, got 13'),
        ('zstd', 23, r"'zstd' must be an integer from 1 to 22, got 23"),
        ('zstd', True, r'got True'),
    ):
        with pytest.raises(ValueError, match=message):
            final_copy(src, tmp_path / 'bad.tif', True, 'AVERAGE', compress, level)
        with pytest.raises(ValueError, match=message):
            predict_raster(
                Threshold(),
                tmp_path / 'work.tif',
                tmp_path / 'bad.tif',
                normalize=False,
                compress=compress,  # type: ignore[arg-type]
                compress_level=level,
            )
        assert not (tmp_path / 'bad.tif').exists()


def test_cog_overviews_are_computed_uncompressed_into_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL's temporary overview file is left uncompressed; the COG is unchanged."""
    rng = np.random.default_rng(0)
    src = tmp_path / 'work.tif'
    # 700 px wide, above the COG's 512 px: overviews are made.
    write_layout(src, rng.integers(0, 255, (2, 600, 700)).astype(np.uint8), tiled=True)
    final_copy(src, tmp_path / 'ours.tif', True, 'AVERAGE')
    with rasterio.Env(COG_TMP_COMPRESSION='ZSTD'):  # GDAL's own default
        final_copy(src, tmp_path / 'gdal.tif', True, 'AVERAGE')
    with rasterio.open(tmp_path / 'ours.tif') as cog:
        assert cog.overviews(1) == [2]
    assert (tmp_path / 'ours.tif').read_bytes() == (tmp_path / 'gdal.tif').read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'gdal.tif',
        'ours.tif',
        'work.tif',
    ]

    seen: list[str | None] = []

    def copy(*args: Any, **kwargs: Any) -> None:
        seen.append(rasterio.env.getenv().get('COG_TMP_COMPRESSION'))

    monkeypatch.setattr(rasterio.shutil, 'copy', copy)
    final_copy(src, tmp_path / 'a.tif', True, 'AVERAGE')
    with rasterio.Env(COG_TMP_COMPRESSION='LZW'):  # a caller's choice stays
        final_copy(src, tmp_path / 'b.tif', True, 'AVERAGE')
    monkeypatch.setenv('COG_TMP_COMPRESSION', 'LZW')  # GDAL reads it itself
    final_copy(src, tmp_path / 'c.tif', True, 'AVERAGE')
    assert seen == ['NONE', 'LZW', None]


class FailsOnSecondBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError('model failed')
        return Pointwise()(x)


class NotLogits(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


@pytest.mark.parametrize('model', [FailsOnSecondBatch, NotLogits])
def test_errors_stop_every_thread(tmp_path: Path, model: type[nn.Module]) -> None:
    # One fails inside the pipeline, one at the first batch (neither (B, C)
    # nor (B, C, H, W) logits) while the reader is already reading ahead.
    write_raster(tmp_path / 'in.tif', height=120, width=100)
    with pytest.raises((RuntimeError, ValueError)):
        predict_raster(
            model(),
            tmp_path / 'in.tif',
            tmp_path / 'out.tif',
            tile_size=16,
            overlap=4,
            batch_size=2,
            normalize=False,
            output='classes',
        )
    alive = [t.name for t in threading.enumerate() if t.name.startswith('tile-')]
    assert alive == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.tif']


def test_default_batch_size_follows_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_batch_size('cpu') == 4
    assert default_batch_size(torch.device('cuda', 1)) == 16
    # As many pixels per batch as 4 (16) tiles of 256 px, at most 64x the tiles.
    for tile, cpu in ((512, 4), (256, 4), (224, 4), (128, 16), (100, 24), (32, 256)):
        assert default_batch_size('cpu', tile) == cpu
        assert default_batch_size('cuda', tile) == 4 * cpu
    assert default_batch_size('cpu', 8) == 256
    with pytest.raises(ValueError, match='tile_size must be >= 1, got 0'):
        default_batch_size('cpu', 0)
    assert default_readers('cpu') == 1
    for cores, readers in ((None, 1), (2, 1), (8, 2), (16, 4), (128, 4)):
        monkeypatch.setattr(tiles_module.os, 'cpu_count', lambda cores=cores: cores)
        assert default_readers('cuda') == readers
        assert default_readers('cpu') == 1
    write_raster(tmp_path / 'in.tif', height=120, width=100)
    model = Recorder()
    predict_raster(
        model, tmp_path / 'in.tif', tmp_path / 'out.tif', tile_size=128, normalize=False
    )
    assert model.batch_sizes == [1]  # one 128 px tile covers the raster
    predict_raster(
        model, tmp_path / 'in.tif', tmp_path / 'out.tif', tile_size=16, normalize=False
    )
    # 16 px tiles: 256 per batch; this raster has fewer.
    tiles = len(TileGrid(120, 100, 16, tiles_module.default_overlap(16)))
    assert model.batch_sizes[1:] == [tiles] and tiles < 256


#: Float scores without activation, normalised, in small tiles and batches.
RAW_SCORES: dict[str, Any] = {
    'tile_size': 16,
    'overlap': 4,
    'batch_size': 3,
    'output': 'scores',
    'activation': 'none',
    'normalize': ([100.0, 200.0, 300.0, 400.0], [10.0, 20.0, 30.0, 40.0]),
}


class Smooth(nn.Module):
    """3 x 3 means: each output pixel sees its neighbours (and masked pixels)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(x[:, :2], 3, stride=1, padding=1)


def predict_both_ways(
    model: nn.Module, tmp_path: Path, options: dict[str, Any], patch: Callable[[], None]
) -> tuple[np.ndarray, np.ndarray]:
    """``in.tif`` predicted as it is, then after *patch*: both rasters."""
    predict_raster(model, tmp_path / 'in.tif', tmp_path / 'first.tif', **options)
    patch()
    predict_raster(model, tmp_path / 'in.tif', tmp_path / 'second.tif', **options)
    with (
        rasterio.open(tmp_path / 'first.tif') as first,
        rasterio.open(tmp_path / 'second.tif') as second,
    ):
        return first.read(), second.read()


@pytest.mark.parametrize('raw', [False, True])
def test_raster_layouts_give_the_same_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: bool
) -> None:
    # A pixel-interleaved, uncompressed GeoTIFF is read into buffers of its
    # own layout (reordered by the conversion, or on the device after an
    # upload as it lies); other layouts band by band. Same rasters.
    data = write_raster(tmp_path / 'pixel.tif', height=90, width=75, nodata=0)
    with rasterio.open(tmp_path / 'pixel.tif') as src:
        profile = src.profile
    copies: list[tuple[str, dict[str, Any], list[int]]] = [
        ('band.tif', {'interleave': 'band'}, [0, 1, 2, 3]),
        ('deflate.tif', {'compress': 'deflate', 'tiled': True}, [0, 1, 2, 3]),
        ('reordered.tif', {}, [2, 1, 0, 3]),
    ]
    for name, layout, order in copies:
        extra = {'blockxsize': 32, 'blockysize': 32} | layout
        with rasterio.open(tmp_path / name, 'w', **(profile | extra)) as dst:
            dst.write(data[order])
    init = tiles_module._Tiles.__init__
    layouts: list[bool] = []

    def recording(self: tiles_module._Tiles, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        layouts.append(self.pixel)

    monkeypatch.setattr(tiles_module._Tiles, '__init__', recording)
    if raw:
        monkeypatch.setattr(tiles_module, '_raw_on_device', lambda device: True)
    options = dict(RAW_SCORES)
    results = {}
    runs: list[tuple[str, list[int] | None]] = [
        ('pixel.tif', None),
        ('band.tif', None),
        ('deflate.tif', None),
        ('reordered.tif', None),
        ('pixel.tif', [3, 2, 1, 4]),  # in another order: band by band
    ]
    for name, bands in runs:
        out = tmp_path / f'{name}-{bands is None}.out.tif'
        predict_raster(Smooth(), tmp_path / name, out, bands=bands, **options)
        with rasterio.open(out) as dst:
            results[name, bands is None] = dst.read()
    assert layouts == [True, False, False, True, False]
    expected = results['pixel.tif', True]
    assert np.isnan(expected[:, :10, :7]).all() and not np.isnan(expected[:, 20:]).any()
    for key in (('band.tif', True), ('deflate.tif', True)):
        np.testing.assert_array_equal(results[key], expected)
    np.testing.assert_array_equal(
        results['pixel.tif', False], results['reordered.tif', True]
    )
    assert not np.array_equal(results['reordered.tif', True], expected)


def record_batches(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every batch the readers hand on, recorded as (dtype, normalized, masked)."""
    read = tiles_module._Tiles.read
    seen: list[tuple[torch.dtype, bool, bool]] = []

    def recording(self: tiles_module._Tiles, *args: Any) -> Any:
        batch = read(self, *args)
        if batch is not None:
            seen.append((batch.x.dtype, batch.normalized, batch.valid is not None))
        return batch

    monkeypatch.setattr(tiles_module._Tiles, 'read', recording)
    return seen


@pytest.mark.parametrize('mode', ['raw', 'float32'])
def test_accelerator_path_matches_host_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # On CUDA the batch leaves the reader raw, in the raster's own type; on
    # other accelerators as float32. Either way it is normalised and masked
    # after the copy to the device, in the model's thread. Forced here on the
    # CPU, both paths must give the host path's raster exactly.
    write_raster(tmp_path / 'in.tif', height=90, width=75, nodata=0)
    options = dict(RAW_SCORES)
    init = tiles_module._Tiles.__init__
    recorded: list[list[Any]] = []

    def off_host(self: tiles_module._Tiles, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.on_host = False

    def patch() -> None:
        if mode == 'raw':
            monkeypatch.setattr(tiles_module, '_raw_on_device', lambda device: True)
        else:
            monkeypatch.setattr(tiles_module._Tiles, '__init__', off_host)
        recorded.append(record_batches(monkeypatch))

    expected, actual = predict_both_ways(Smooth(), tmp_path, options, patch)
    # Not normalised; the nodata mask travels with the batches.
    batches = recorded[0]
    dtype = torch.uint16 if mode == 'raw' else torch.float32
    assert (dtype, False, True) in batches
    assert {d for d, *_ in batches} == {dtype}
    assert not any(normalized for _, normalized, _ in batches)
    assert np.isnan(expected[:, :10, :7]).all()
    np.testing.assert_array_equal(actual, expected)


class Holes(nn.Module):
    """Three-class logits, NaN at each tile's top-left corner and in every
    tile whose first pixel of band 0 is odd (whole tiles non-finite)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        y = torch.stack([x[:, 0], x[:, 1] * 0.5, x[:, 2] - x[:, 3]], dim=1) / 500
        y[:, :, :3, :3] = float('nan')
        y[:, 2, 5, 5] = float('inf')
        y[(x[:, 0, 0, 0] % 2 == 1)] = float('nan')
        if self.kind == 'classification':
            return (
                y.nan_to_num(nan=1.0).mean(dim=(2, 3))
                * torch.where(x[:, 0, 0, 0] % 3 == 0, float('nan'), 1.0)[:, None]
            )
        return y


@pytest.mark.parametrize(
    ('kind', 'output', 'score_dtype', 'activation'),
    [
        ('segmentation', 'classes', None, None),
        ('segmentation', 'scores', 'uint8', None),
        ('segmentation', 'scores', 'float32', 'none'),
        ('segmentation', 'classes', None, 'sigmoid'),  # multilabel
        ('classification', 'scores', 'float32', None),
    ],
)
def test_device_blending_matches_host_blending(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    output: str,
    score_dtype: str | None,
    activation: Any,
) -> None:
    # On CUDA, the model's thread blends and encodes on the device
    # (masking non-finite scores without a host sync) and the writer only
    # writes. Forced here on the CPU, that path must give the host path's
    # raster exactly, with nodata in the input and non-finite model outputs.
    write_raster(tmp_path / 'in.tif', height=90, width=75, nodata=0)
    options: dict[str, Any] = {
        'tile_size': 16,
        'overlap': 6,
        'batch_size': 5,
        'output': output,
        'score_dtype': score_dtype,
        'activation': activation,
        'normalize': False,
    }
    written: list[Any] = []
    blend = tiles_module._blend_on_device

    def recording(*args: Any) -> Any:
        job = blend(*args)
        written.append(job)
        return job

    def patch() -> None:
        monkeypatch.setattr(tiles_module, '_blends_on_device', lambda device: True)
        monkeypatch.setattr(tiles_module, '_blend_on_device', recording)

    expected, actual = predict_both_ways(Holes(kind), tmp_path, options, patch)
    # One job per batch and one for the rows left; rows cover the output once.
    grid = TileGrid(90, 75, 16, 6)
    if kind == 'classification':
        assert expected.shape[1:] == (grid.rows, grid.cols)
    assert len(written) == -(-len(grid) // 5) + 1
    spans = [(job.top, job.until) for job in written if job.data is not None]
    assert [top for top, _ in spans[1:]] == [until for _, until in spans[:-1]]
    assert spans[0][0] == 0 and spans[-1][1] == expected.shape[1]
    with rasterio.open(tmp_path / 'first.tif') as first:
        nodata = first.nodata
    missing = np.isnan(expected) if np.isnan(nodata) else expected == nodata
    # The holes reach the output as nodata, and not everywhere.
    assert 0 < missing.mean() < 0.9
    np.testing.assert_array_equal(actual, expected)


def test_model_hash_follows_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> tuple[nn.Sequential, nn.Conv2d, nn.BatchNorm2d]:
        conv, norm = nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)
        return nn.Sequential(conv, norm), conv, norm

    torch.manual_seed(0)
    model, conv, norm = make()
    first = tiles_module._model_hash(model)
    twin = make()[0]
    twin.load_state_dict(model.state_dict())
    assert tiles_module._model_hash(twin) == first  # content, not identity
    # A second prediction with the same model reads no weights again.
    calls: list[int] = []
    sha256 = tiles_module.hashlib.sha256

    def counted() -> Any:
        calls.append(1)
        return sha256()

    monkeypatch.setattr(tiles_module.hashlib, 'sha256', counted)
    assert tiles_module._model_hash(model) == first and not calls
    # New weights through load_state_dict, an optimiser-style in-place update,
    # a replaced tensor and a changed buffer each give a new hash.
    model.load_state_dict(make()[0].state_dict())
    second = tiles_module._model_hash(model)
    assert second != first and len(calls) == 1
    assert conv.bias is not None and norm.running_mean is not None
    with torch.no_grad():
        conv.bias.add_(1.0)
    third = tiles_module._model_hash(model)
    conv.weight = nn.Parameter(conv.weight.detach().clone() * 2)
    fourth = tiles_module._model_hash(model)
    norm.running_mean.fill_(3.0)
    fifth = tiles_module._model_hash(model)
    assert len({first, second, third, fourth, fifth}) == 5 and len(calls) == 4


class InterruptAt(nn.Module):
    """Pointwise logits; Ctrl-C at forward call *at* (never if None)."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return Pointwise()(x)


READERS_OPTIONS: dict[str, Any] = {
    'tile_size': 16,
    'overlap': 4,
    'batch_size': 3,
    'normalize': ([100.0, 200.0, 300.0, 400.0], [10.0, 20.0, 30.0, 40.0]),
    'commit_interval': 0,
}


@pytest.mark.parametrize('readers', [2, 3, 40])
def test_several_readers_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readers: int
) -> None:
    # 8 x 9 tiles in batches of 3; 40 readers are more than the 24 batches.
    write_raster(tmp_path / 'in.tif', height=100, width=110, nodata=0)
    opened: list[Any] = []
    used: dict[str, set[int]] = {}
    open_source_ = tiles_module.open_source
    read_tile = tiles_module._read_tile

    def recording_open(*args: Any) -> Any:
        opened.append(open_source_(*args))
        return opened[-1]

    def recording_read(source: Any, *args: Any) -> Any:
        used.setdefault(threading.current_thread().name, set()).add(id(source))
        time.sleep(0.005)  # slower than the model: more readers start
        return read_tile(source, *args)

    for model, output in ((Smooth(), 'scores'), (Threshold(), 'classes')):
        options = {**READERS_OPTIONS, 'output': output}
        if output == 'scores':
            options['activation'] = 'none'
        one = tmp_path / f'one_{output}.tif'
        predict_raster(model, tmp_path / 'in.tif', one, readers=1, **options)
        monkeypatch.setattr(tiles_module, 'open_source', recording_open)
        monkeypatch.setattr(tiles_module, '_read_tile', recording_read)
        many = tmp_path / f'many_{output}.tif'
        used.clear()
        predict_raster(model, tmp_path / 'in.tif', many, readers=readers, **options)
        monkeypatch.undo()
        assert many.read_bytes() == one.read_bytes()
        # One handle of the input per reader, each used by one thread only;
        # the first batch is read by the caller before the readers start.
        # Reads slower than the model: more readers start, one per handle
        # at most.
        threads = {name: ids for name, ids in used.items() if name != 'MainThread'}
        assert all(len(ids) == 1 for ids in threads.values())
        assert len(set.union(*threads.values())) == len(threads)
        assert 2 <= len(threads) <= min(readers, 23)
    assert len(opened) == 2 * readers
    assert all(h.closed for source in opened for h in source._handles)
    assert not [t for t in threading.enumerate() if t.name.startswith('tile-')]


def test_a_run_resumes_with_another_number_of_readers(tmp_path: Path) -> None:
    write_raster(tmp_path / 'in.tif', height=100, width=110)
    options = {**READERS_OPTIONS, 'output': 'scores', 'activation': 'none'}
    out = tmp_path / 'out.tif'
    with pytest.raises(KeyboardInterrupt):
        predict_raster(InterruptAt(14), tmp_path / 'in.tif', out, readers=2, **options)
    assert (tmp_path / '.out.tif.progress.json').exists() and not out.exists()
    result = predict_raster(
        InterruptAt(), tmp_path / 'in.tif', out, readers=3, **options
    )
    assert result.resumed_rows > 0 and result.tiles_run < result.num_tiles
    predict_raster(
        InterruptAt(), tmp_path / 'in.tif', tmp_path / 'fresh.tif', readers=1, **options
    )
    assert out.read_bytes() == (tmp_path / 'fresh.tif').read_bytes()


def test_an_error_in_any_reader_stops_every_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_raster(tmp_path / 'in.tif', height=100, width=110)
    read_tile = tiles_module._read_tile

    def fails_in_later_readers(
        source: Any, positions: Any, grid: Any, row: int, col: int, *args: Any
    ) -> Any:
        time.sleep(0.005)  # slower than the model: more readers start
        name = threading.current_thread().name
        if name.startswith('tile-reader-') and name != 'tile-reader-0' and row >= 4:
            raise OSError(f'{source.name}: read failed at tile row {row}')
        return read_tile(source, positions, grid, row, col, *args)

    monkeypatch.setattr(tiles_module, '_read_tile', fails_in_later_readers)
    with pytest.raises(OSError, match='read failed at tile row [4-7]'):
        predict_raster(
            Threshold(),
            tmp_path / 'in.tif',
            tmp_path / 'out.tif',
            readers=3,
            **READERS_OPTIONS,
        )
    assert not [t for t in threading.enumerate() if t.name.startswith('tile-')]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.tif']


class AutocastRecorder(nn.Module):
    """Pointwise logits; records the autocast state of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)
        self.states: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.states.append(
            (torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu'))
        )
        return self.conv(x)


def test_precision_runs_the_model_under_autocast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_raster(tmp_path / 'in.tif', height=60, width=50)
    torch.manual_seed(0)
    model = AutocastRecorder()
    options: dict[str, Any] = {
        'tile_size': 16,
        'normalize': ([1500.0] * 4, [800.0] * 4),
        'output': 'scores',
        'score_dtype': 'float32',
    }
    scores = {}
    for precision, expected in (('32', '32-true'), ('bf16', 'bf16-mixed')):
        model.states.clear()
        out = tmp_path / f'{precision}.tif'
        result = predict_raster(
            model, tmp_path / 'in.tif', out, precision=precision, **options
        )
        assert result.precision == expected
        assert set(model.states) == {(precision == 'bf16', torch.bfloat16)}
        with rasterio.open(out) as dst:
            scores[precision] = dst.read()
    # bf16 logits, softmax and blending in fp32: close to fp32, not equal.
    np.testing.assert_allclose(scores['bf16'], scores['32'], atol=0.02)
    assert not np.array_equal(scores['bf16'], scores['32'])
    # auto: what the machine computes natively.
    for detected in ('bf16-mixed', '32-true'):
        monkeypatch.setattr(
            precision_module, 'detect_precision', lambda device_type, d=detected: d
        )
        result = predict_raster(
            model,
            tmp_path / 'in.tif',
            tmp_path / 'auto.tif',
            precision='auto',
            **options,
        )
        assert result.precision == detected
    with pytest.raises(
        ValueError, match="precision must be one of auto, 32, bf16, got 'fp8'"
    ):
        predict_raster(
            model, tmp_path / 'in.tif', tmp_path / 'bad.tif', precision='fp8'
        )
    assert not (tmp_path / 'bad.tif').exists()


@pytest.mark.parametrize('readers', [0, -1, 1.5, True])
def test_bad_reader_counts(tmp_path: Path, readers: Any) -> None:
    write_raster(tmp_path / 'in.tif')
    with pytest.raises(
        ValueError, match=f'readers must be an integer >= 1, got {readers!r}'
    ):
        predict_raster(
            Threshold(),
            tmp_path / 'in.tif',
            tmp_path / 'out.tif',
            normalize=False,
            readers=readers,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.tif']


@pytest.mark.parametrize('readers', [1, 3])
@pytest.mark.parametrize('raw', [False, True], ids=['host', 'raw'])
def test_stopped_readers_give_every_buffer_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readers: int, raw: bool
) -> None:
    # A resumed run stops the readers and starts them again: batches they
    # had read and not handed on, or still in hand, must all return their
    # buffers, or the restarted readers wait for a buffer forever.
    write_raster(tmp_path / 'in.tif', height=100, width=110)
    grid = TileGrid(100, 110, 16, 4)
    device = torch.device('cpu')
    # Raw batches (an accelerator's) are read straight into their buffer.
    monkeypatch.setattr(tiles_module, '_raw_on_device', lambda device: raw)
    count = tiles_module._buffer_count(readers, device)
    with contextlib.ExitStack() as stack:
        sources = [
            stack.enter_context(open_source(tmp_path / 'in.tif'))
            for _ in range(readers)
        ]
        tiles = tiles_module._Tiles(
            sources[0], [0, 1, 2, 3], grid, 3, lambda x: x, device, count
        )
        siblings = [tiles, *(tiles.sibling(s) for s in sources[1:])]
        for _ in range(2):
            reading = tiles_module._Reading(siblings, 3)
            # Nothing is taken: the first reader reads into every buffer.
            deadline = time.monotonic() + 30
            while len(reading.ready) < count and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)
            assert tiles.pool.qsize() == 0 and len(reading.ready) == count
            assert sorted(reading.ready) == [3 + 3 * i for i in range(count)]
            assert len(reading.workers) == 1  # no batch was waited for
            batch = reading.get()
            assert batch.start == 3
            tiles.give(batch)
            reading.close()
            assert tiles.pool.qsize() == count and not reading.ready


def test_readers_start_while_the_model_waits_for_them(tmp_path: Path) -> None:
    """One reader while reading keeps up; more once the model waits."""
    write_raster(tmp_path / 'in.tif', height=100, width=110)
    grid = TileGrid(100, 110, 16, 4)  # 72 tiles: 24 batches of 3
    device = torch.device('cpu')
    with contextlib.ExitStack() as stack:
        sources = [
            stack.enter_context(open_source(tmp_path / 'in.tif')) for _ in range(4)
        ]
        tiles = tiles_module._Tiles(
            sources[0], [0, 1, 2, 3], grid, 3, lambda x: x, device, 5
        )
        siblings = [tiles, *(tiles.sibling(s) for s in sources[1:])]
        reading = tiles_module._Reading(siblings, 0)
        starts = []
        for _ in range(12):  # a slow model: the reader stays ahead
            batch = reading.get()
            starts.append(batch.start)
            time.sleep(0.02)
            tiles.give(batch)
        assert len(reading.workers) == 1
        fill = tiles_module._Tiles.fill

        def slow_fill(self: Any, *args: Any) -> Any:
            time.sleep(0.02)
            return fill(self, *args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tiles_module._Tiles, 'fill', slow_fill)
            while (batch := reading.get()) is not tiles_module._DONE:
                starts.append(batch.start)  # a fast model: it waits
                tiles.give(batch)
        reading.close()
        assert len(reading.workers) == 4
        assert starts == list(range(0, 72, 3))
        assert tiles.pool.qsize() == 5


@pytest.mark.parametrize('dtype', ['float32', 'uint32', 'int16'])
def test_raw_batches_of_any_type_match_the_host_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    # Raw batches are read in the raster's type where torch has it (float32
    # with NaN holes, int16) and as float32 otherwise (uint32).
    rng = np.random.default_rng(3)
    data = rng.integers(0, 3000, (4, 50, 45)).astype(dtype)
    if dtype == 'float32':
        data[2, 10:20, 5:9] = np.nan
    profile = {
        'driver': 'GTiff',
        'height': 50,
        'width': 45,
        'count': 4,
        'dtype': dtype,
        'crs': 'EPSG:32618',
        'transform': from_origin(500_000, 4_170_000, 10, 10),
    }
    with rasterio.open(tmp_path / 'in.tif', 'w', **profile) as dst:
        dst.write(data)
    options = {**RAW_SCORES, 'normalize': ([1000.0] * 4, [500.0] * 4)}
    recorded: list[list[Any]] = []

    def patch() -> None:
        monkeypatch.setattr(tiles_module, '_raw_on_device', lambda device: True)
        recorded.append(record_batches(monkeypatch))

    expected, actual = predict_both_ways(Smooth(), tmp_path, options, patch)
    types = {batch_type for batch_type, *_ in recorded[0]}
    assert types == {torch.float32 if dtype == 'uint32' else getattr(torch, dtype)}
    if dtype == 'float32':
        assert np.isnan(expected[:, 10:20, 5:9]).all()
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('output', ['classes', 'scores'])
@pytest.mark.parametrize('interleave', ['pixel', 'band'])
def test_cuda_matches_cpu(tmp_path: Path, output: str, interleave: str) -> None:
    # The real CUDA path end to end: uint16 tiles in pinned buffers (in the
    # file's layout), conversion, normalisation, blending and encoding on the
    # GPU, events.
    data = write_raster(tmp_path / 'in.tif', height=300, width=260, nodata=0)
    if interleave == 'band':
        with rasterio.open(tmp_path / 'in.tif') as src:
            profile = src.profile | {'interleave': 'band'}
        with rasterio.open(tmp_path / 'in.tif', 'w', **profile) as dst:
            dst.write(data)
    options: dict[str, Any] = {
        'tile_size': 64,
        'overlap': 16,
        'batch_size': 4,
        'output': output,
        'normalize': ([1500.0] * 4, [800.0] * 4),
    }
    for device in ('cpu', 'cuda'):
        predict_raster(
            Threshold(),
            tmp_path / 'in.tif',
            tmp_path / f'{device}.tif',
            device=device,
            readers=2,
            **options,
        )
    with (
        rasterio.open(tmp_path / 'cpu.tif') as a,
        rasterio.open(tmp_path / 'cuda.tif') as b,
    ):
        expected, actual = a.read().astype(int), b.read().astype(int)
    assert (expected == 255).sum() == (actual == 255).sum() > 0  # nodata
    if output == 'classes':
        assert (expected == actual).mean() > 0.999
    else:
        assert np.abs(expected - actual).max() <= 1
