"""Predictions a GIS user can trust: nodata, bands, normalisation, memory, kills."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer
from rasterio.transform import from_origin
from torch import Tensor, nn

from explora_geo.inference.cli import load_task
from explora_geo.inference.sources import RasterSource
from explora_geo.inference.tiles import TileGrid, predict_raster
from explora_geo.sensors import SENTINEL2, InputSpec
from explora_geo.tasks.segmentation import SemanticSegmentationTask

TRANSFORM = from_origin(500_000, 4_170_000, 10, 10)
ROOT = Path(__file__).parents[2]


def write(
    path: Path,
    data: np.ndarray,
    nodata: float | None = None,
    names: list[str] | None = None,
) -> None:
    profile = {
        'driver': 'GTiff',
        'height': data.shape[1],
        'width': data.shape[2],
        'count': data.shape[0],
        'dtype': str(data.dtype),
        'crs': 'EPSG:32618',
        'transform': TRANSFORM,
        'nodata': nodata,
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names or [], start=1):
            dst.set_band_description(i, name)


class Conv3(nn.Module):
    """Three classes from a 3 x 3 convolution: a receptive field of one pixel."""

    def __init__(self, bands: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(bands, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


NORMALIZE = ([1500.0] * 4, [800.0] * 4)


@pytest.mark.parametrize('tagged', [True, False], ids=['nodata-nan', 'untagged-nan'])
def test_nan_block_never_spreads_and_is_never_class_0(
    tmp_path: Path, tagged: bool
) -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 3000, (4, 70, 53)).astype(np.float32)
    holed = clean.copy()
    holed[1, 20:35, 15:30] = np.nan  # one band is enough to invalidate a pixel
    holed[3, 50, 40] = np.inf
    write(tmp_path / 'clean.tif', clean)
    write(tmp_path / 'holed.tif', holed, nodata=float('nan') if tagged else None)
    common = {'tile_size': 32, 'overlap': 8, 'normalize': NORMALIZE}
    for name in ('clean', 'holed'):
        for output in ('scores', 'classes'):
            predict_raster(
                Conv3(),
                tmp_path / f'{name}.tif',
                tmp_path / f'{name}_{output}.tif',
                output=output,
                score_dtype='float32',
                **common,  # type: ignore[arg-type]
            )
    invalid = np.zeros((70, 53), bool)
    invalid[20:35, 15:30] = True
    invalid[50, 40] = True
    # Outside the model's receptive field (1 px) of the invalid pixels, every
    # valid pixel is what it would be without them.
    near = torch.nn.functional.max_pool2d(
        torch.from_numpy(invalid)[None].float(), 3, stride=1, padding=1
    )[0]
    far = ~near.bool().numpy()
    with (
        rasterio.open(tmp_path / 'clean_scores.tif') as a,
        rasterio.open(tmp_path / 'holed_scores.tif') as b,
    ):
        ref, out = a.read(), b.read()
    assert np.isnan(out[:, invalid]).all()
    assert np.isfinite(out[:, ~invalid]).all()
    np.testing.assert_allclose(out[:, far], ref[:, far], rtol=1e-5, atol=1e-6)
    with (
        rasterio.open(tmp_path / 'clean_classes.tif') as a,
        rasterio.open(tmp_path / 'holed_classes.tif') as b,
    ):
        ref_classes, classes = a.read(1), b.read(1)
        assert b.nodata == 255
    assert (classes[invalid] == 255).all()
    np.testing.assert_array_equal(classes[far], ref_classes[far])
    assert set(np.unique(classes[~invalid])) <= {0, 1, 2}


def save(task: nn.Module, path: Path) -> Path:
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator='cpu')
    trainer.strategy.connect(task)  # type: ignore[arg-type]
    trainer.save_checkpoint(path)
    return path


TINY = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 32}


def segmenter(bands: tuple[str, ...], normalization: bool) -> SemanticSegmentationTask:
    torch.manual_seed(0)
    return SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        in_channels=len(bands),
        num_classes=3,
        labels=['water', 'field', 'forest'],
        decoder_channels=16,
        model_kwargs=TINY,
        normalization=SENTINEL2.normalization('standard', bands).to_dict()
        if normalization
        else None,
    )


def test_normalisation_from_checkpoint_and_warning_without(tmp_path: Path) -> None:
    bands = ('B2', 'B3', 'B4', 'B8')
    data = np.random.default_rng(1).integers(1, 4000, (4, 40, 48)).astype(np.uint16)
    # The file names its bands B08, B04, B03, B02: matched by name, reordered.
    write(tmp_path / 'in.tif', data[::-1].copy(), names=['B08', 'B04', 'B03', 'B02'])
    task = load_task(save(segmenter(bands, True), tmp_path / 'norm.ckpt'))
    spec = task.input_spec
    assert isinstance(spec, InputSpec) and spec.bands == bands
    assert spec.img_size == 32 and spec.patch_size == 14
    assert spec.classes == ('water', 'field', 'forest')
    with rasterio.open(tmp_path / 'in.tif'):
        pass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        predict_raster(task, tmp_path / 'in.tif', tmp_path / 'auto.tif')
    write(tmp_path / 'ordered.tif', data)
    norm = SENTINEL2.normalization('standard', bands)
    predict_raster(
        task,
        tmp_path / 'ordered.tif',
        tmp_path / 'explicit.tif',
        normalize=(list(norm.mean), list(norm.std)),
        spec=InputSpec(img_size=32),
    )
    with (
        rasterio.open(tmp_path / 'auto.tif') as a,
        rasterio.open(tmp_path / 'explicit.tif') as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.read().max() <= 2

    bare = load_task(save(segmenter(bands, False), tmp_path / 'bare.ckpt'))
    with pytest.warns(
        UserWarning, match=r'sees raw uint16 values .* predictions are likely wrong'
    ):
        predict_raster(bare, tmp_path / 'in.tif', tmp_path / 'raw.tif')


def test_band_mismatch_names_both_lists(tmp_path: Path) -> None:
    # A Landsat-8 stack (11 bands) for a 13-band Sentinel-2 model.
    landsat = [f'B{i}' for i in range(1, 12)]
    write(tmp_path / 'l8.tif', np.ones((11, 20, 20), np.uint16), names=landsat)
    spec = InputSpec(normalization=SENTINEL2.normalization('satmae'), img_size=16)
    with pytest.raises(ValueError) as info:
        predict_raster(Conv3(13), tmp_path / 'l8.tif', tmp_path / 'o.tif', spec=spec)
    message = str(info.value)
    assert str(list(SENTINEL2.bands)) in message and str(landsat) in message
    assert "missing ['B8A', 'B12']" in message
    write(tmp_path / 'unnamed.tif', np.ones((11, 20, 20), np.uint16))
    with pytest.raises(ValueError, match=r'takes 13 bands .* has 11 unnamed bands'):
        predict_raster(
            Conv3(13), tmp_path / 'unnamed.tif', tmp_path / 'o.tif', spec=spec
        )
    # Naming the bands on the command line (--bands) is checked the same way.
    with pytest.raises(ValueError, match=r"missing \['B8A', 'B12'\]"):
        predict_raster(
            Conv3(13),
            tmp_path / 'unnamed.tif',
            tmp_path / 'o.tif',
            spec=spec,
            input_bands=landsat,
        )
    assert not (tmp_path / 'o.tif').exists()


def test_reads_only_tile_windows_and_bounds_gdal_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wide raster whose last tile row and column cross the edge: no read
    # may be wider or taller than a tile (no full-width strips).
    data = np.random.default_rng(0).integers(0, 3000, (4, 45, 700)).astype(np.uint16)
    write(tmp_path / 'wide.tif', data)
    windows = []
    read = RasterSource.read

    def spy(
        self: RasterSource,
        positions: list[int],
        window: rasterio.windows.Window,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        windows.append((int(window.height), int(window.width)))
        return read(self, positions, window, out)

    monkeypatch.setattr(RasterSource, 'read', spy)
    cache_sizes = []

    class Recording(Conv3):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            cache_sizes.append(rasterio.env.get_gdal_config('GDAL_CACHEMAX'))
            return super().forward(x)

    before = rasterio.env.get_gdal_config('GDAL_CACHEMAX')
    predict_raster(
        Recording(),
        tmp_path / 'wide.tif',
        tmp_path / 'o.tif',
        tile_size=32,
        overlap=8,
        normalize=NORMALIZE,
        gdal_cache_mb=48,
    )
    grid = TileGrid(45, 700, 32, 8)
    assert len(windows) == len(grid)  # every tile read once
    assert max(h for h, _ in windows) <= 32 and max(w for _, w in windows) <= 32
    # 48 MB (rasterio passes integers to GDAL as bytes) while predicting only.
    assert set(cache_sizes) == {48 * 2**20}
    assert rasterio.env.get_gdal_config('GDAL_CACHEMAX') == before


KILLABLE = """
import sys, time, torch
from torch import nn
from explora_geo.inference.tiles import predict_raster

class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        time.sleep(float(sys.argv[3]))
        return self.conv(x)

try:
    r = predict_raster(
        Slow(), sys.argv[1], sys.argv[2], tile_size=16, overlap=4, batch_size=2,
        normalize=([1500.0] * 4, [800.0] * 4), output='scores', commit_interval=0,
    )
except KeyboardInterrupt:
    sys.exit(130)
print('tiles_run', r.tiles_run, 'resumed_rows', r.resumed_rows)
"""


def run_child(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(
        [sys.executable, '-c', KILLABLE, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_progress(state: Path, child: subprocess.Popen[str], rows: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = state.read_text() if state.exists() else ''
        if text and json.loads(text)['rows_done'] >= rows:
            return
        if child.poll() is not None:
            raise AssertionError(f'child ended early: {child.communicate()}')
        time.sleep(0.05)
    raise AssertionError('no progress recorded')


@pytest.mark.slow
def test_killed_runs_resume_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(0).integers(1, 3000, (4, 70, 53)).astype(np.uint16)
    write(tmp_path / 'in.tif', data)
    out = tmp_path / 'out' / 'pred.tif'
    state = out.parent / '.pred.tif.progress.json'
    # SIGTERM (timeout, SLURM) is handled like Ctrl-C: progress kept, lock
    # released, exit status 130.
    child = run_child([str(tmp_path / 'in.tif'), str(out), '0.15'])
    wait_for_progress(state, child, 12)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    assert child.returncode == 130
    assert sorted(p.name for p in out.parent.iterdir()) == [
        '.pred.tif.partial.tif',
        '.pred.tif.progress.json',
    ]
    # The rerun continues; SIGKILL it further on.
    child = run_child([str(tmp_path / 'in.tif'), str(out), '0.15'])
    wait_for_progress(state, child, 36)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL and not out.exists()
    # A killed run's temporary file (its process is gone) is removed.
    (out.parent / '.pred.999999999-0badf00d.tmp.tif').write_bytes(b'partial')
    child = run_child([str(tmp_path / 'in.tif'), str(out), '0'])
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    tiles_run, resumed_rows = (int(v) for v in stdout.split()[1::2])
    # 6 x 5 tiles, stride 12: rows >= 36 need tile rows 2 onwards at most.
    assert resumed_rows >= 36 and tiles_run <= 20
    assert sorted(p.name for p in out.parent.iterdir()) == ['pred.tif']
    # Byte-identical to an uninterrupted run (same thread count as the child).
    monkeypatch.setattr(sys, 'argv', ['-c', '', '', '0'])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict[str, Any] = {}
        exec(KILLABLE.split('try:')[0], namespace)
        result = predict_raster(
            namespace['Slow'](),
            tmp_path / 'in.tif',
            tmp_path / 'fresh.tif',
            tile_size=16,
            overlap=4,
            batch_size=2,
            normalize=([1500.0] * 4, [800.0] * 4),
            output='scores',
        )
    finally:
        torch.set_num_threads(threads)
    assert result.tiles_run == 30
    assert out.read_bytes() == (tmp_path / 'fresh.tif').read_bytes()


def test_changed_run_starts_afresh(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(1, 3000, (4, 40, 40)).astype(np.uint16)
    write(tmp_path / 'in.tif', data)
    out = tmp_path / 'o.tif'
    # A partial output of another prediction (other options) is not resumed.
    (tmp_path / '.o.tif.partial.tif').write_bytes(b'junk')
    (tmp_path / '.o.tif.progress.json').write_text(
        '{"signature": {"other": 1}, "rows_done": 20}'
    )
    result = predict_raster(
        Conv3(), tmp_path / 'in.tif', out, tile_size=16, normalize=NORMALIZE
    )
    assert result.resumed_rows == 0 and result.tiles_run == result.num_tiles
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.tif', 'o.tif']


def test_input_spec_read_write() -> None:
    import json as json_

    from explora_geo.sensors import INPUT_SPEC_KEY, read_input_spec, write_input_spec

    spec = InputSpec(
        normalization=SENTINEL2.normalization('satmae'),
        img_size=96,
        patch_size=8,
        classes=('a', 'b'),
    )
    checkpoint: dict[str, object] = {}
    write_input_spec(checkpoint, spec)
    assert read_input_spec(checkpoint) == spec
    # safetensors metadata holds strings only.
    assert read_input_spec({INPUT_SPEC_KEY: json_.dumps(spec.to_dict())}) == spec
    assert read_input_spec({}) is None
    with pytest.raises(ValueError, match='must hold a mapping'):
        read_input_spec({INPUT_SPEC_KEY: 3})


def test_default_overlap_is_the_measured_quarter(tmp_path: Path) -> None:
    from explora_geo.inference.tiles import DEFAULT_OVERLAP_FRACTION, default_overlap

    assert DEFAULT_OVERLAP_FRACTION == 0.25
    assert default_overlap(224, 14) == 56 and default_overlap(128, 16) == 32
    assert default_overlap(224, 16) == 48  # a multiple of the patch size
    data = np.random.default_rng(0).integers(1, 3000, (4, 200, 200)).astype(np.uint16)
    write(tmp_path / 'in.tif', data)
    result = predict_raster(
        Conv3(),
        tmp_path / 'in.tif',
        tmp_path / 'o.tif',
        tile_size=128,
        normalize=NORMALIZE,
    )
    # Overlap 32: stride 96, ceil((200 - 32) / 96) = 2 tiles per side.
    assert result.num_tiles == len(TileGrid(200, 200, 128, 32)) == 4
    docs = (ROOT / 'docs' / 'inference.md').read_text()
    assert 'DEFAULT_OVERLAP_FRACTION = 0.25' in docs and '97.3 %' in docs
