"""The demo on the bundled scene: labels, split, normalisation, reconstructions, report, runs."""

import json
import statistics
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from lightly.models.utils import normalize_mean_var
from rasterio.transform import from_origin

from explora_geo.cli import main
from explora_geo.demo import (
    CLASSES,
    ChipGrid,
    DemoConfig,
    land_cover_labels,
    read_scene,
    run_demo,
    scene_path,
)
from explora_geo.demo.report import results_table
from explora_geo.demo.stages import reconstruct
from explora_geo.models.mae import MAEOutput, create_mae
from explora_geo.models.satmae_group_mae import patchify_bands
from explora_geo.sensors import INPUT_SPEC_KEY, SENTINEL2, InputSpec


@pytest.fixture(scope='module')
def grid() -> ChipGrid:
    return ChipGrid(read_scene(scene_path()), chip=32)


def test_land_cover_rules() -> None:
    scene = np.zeros((13, 1, 4), dtype=np.float32)
    # B3, B4, B8 per pixel: water, dense vegetation, marsh, bare.
    scene[2] = [1000, 800, 900, 1500]
    scene[3] = [600, 300, 700, 1500]
    scene[7] = [300, 2500, 1200, 1700]
    assert land_cover_labels(scene).tolist() == [[0, 1, 2, 3]]


def test_split_is_spatially_disjoint(grid: ChipGrid) -> None:
    positions = grid.train_positions()
    held = grid.test_mask
    for y, x in positions[torch.randperm(len(positions))[:500]].tolist():
        assert not held[y : y + 32, x : x + 32].any()
    # Every held-out chip lies inside held-out blocks.
    for (y, x), test in zip(grid.cells, grid.is_test.tolist(), strict=True):
        assert bool(held[y : y + 32, x : x + 32].all()) == test
    assert 0.2 < grid.is_test.float().mean() < 0.3
    # The held-out chips see more than one class.
    assert len(grid.split_labels('test').unique()) >= 3
    assert grid.held_out_blocks() == [
        (0, 0, 128),
        (128, 384, 128),
        (256, 256, 128),
        (384, 128, 128),
    ]


def test_chip_labels_are_pixel_majorities(grid: ChipGrid) -> None:
    pixels = grid.pixel_labels.numpy()
    for (y, x), label in zip(grid.cells, grid.labels.tolist(), strict=True):
        counts = np.bincount(pixels[y : y + 32, x : x + 32].ravel(), minlength=4)
        assert label == counts.argmax()


def test_scene_normalisation_is_satmae_with_sentinel2_statistics(
    grid: ChipGrid,
) -> None:
    scene = read_scene(scene_path())
    mean = np.asarray(SENTINEL2.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(SENTINEL2.std, dtype=np.float32)[:, None, None]
    expected = np.clip((scene - (mean - 2 * std)) / (4 * std), 0, 1)
    np.testing.assert_allclose(grid.normalized.numpy(), expected, atol=1e-6)


def test_read_scene_names_the_file_and_the_bands(tmp_path: Path) -> None:
    path = tmp_path / 'rgb.tif'
    profile = {
        'driver': 'GTiff',
        'width': 4,
        'height': 4,
        'count': 3,
        'dtype': 'uint16',
        'crs': 'EPSG:32618',
        'transform': from_origin(0, 40, 10, 10),
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(np.zeros((3, 4, 4), dtype=np.uint16))
    with pytest.raises(ValueError, match=r'rgb\.tif: expected the 13 Sentinel-2 bands'):
        read_scene(path)
    shuffled = tmp_path / 'shuffled.tif'
    with rasterio.open(shuffled, 'w', **{**profile, 'count': 13}) as dst:
        dst.write(np.zeros((13, 4, 4), dtype=np.uint16))
        dst.descriptions = SENTINEL2.bands[::-1]
    with pytest.raises(ValueError, match=r"shuffled\.tif: bands are \('B12'"):
        read_scene(shuffled)


def test_reconstruct_maps_norm_pix_predictions_back_to_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    mae = create_mae(
        'explora_vitb_satmae_group',
        img_size=16,
        in_chans=13,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        channel_embed_dim=8,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
        decoder_channel_embed_dim=8,
        norm_pix_loss=True,
    )
    chips = torch.rand(2, 13, 16, 16)
    embed = mae.encoder.patch_embed
    kept = [SENTINEL2.bands.index(b) for b in embed.bands]
    target = patchify_bands(chips[:, kept], 8)  # (B, L, C, p*p)
    # A perfect norm-pix prediction: each token standardised over its group.
    pred = torch.empty_like(target)
    for group in embed.groups:
        idx = [embed.bands.index(b) for b in group]
        part = target[:, :, idx].flatten(2)
        pred[:, :, idx] = normalize_mean_var(part, dim=-1, eps=1e-6).unflatten(
            2, (len(idx), -1)
        )
    mask = torch.zeros(2, len(embed.groups), 4)
    mask[:, 0, :3] = 1
    mask[:, 1, 1:] = 1

    def perfect(x: torch.Tensor, mask_ratio: float = 0.75) -> MAEOutput:
        return MAEOutput(loss=torch.zeros(()), pred=pred.permute(0, 2, 1, 3), mask=mask)

    monkeypatch.setattr(mae, 'forward', perfect)
    image, pixel_mask = reconstruct(mae, chips, seed=0)
    torch.testing.assert_close(image, chips, atol=1e-5, rtol=1e-5)
    assert pixel_mask.shape == (2, len(embed.groups), 16, 16)
    # Token 0 is the top-left 8 x 8 patch, token 3 the bottom-right one.
    assert pixel_mask[0, 0, :8, :8].eq(1).all() and pixel_mask[0, 0, 8:, 8:].eq(0).all()
    assert pixel_mask[0, 1, :8, :8].eq(0).all() and pixel_mask[0, 1, 8:, 8:].eq(1).all()


def test_results_table_gives_each_seed_and_the_spread() -> None:
    results = {
        'seeds': [0, 1, 2],
        'reconstruction_mse': {'after ExPLoRA': [0.2, 0.25, 0.3]},
        'linear_probe_accuracy': {'ExPLoRA': [0.9, 0.95, 1.0]},
        'lora_finetune_accuracy': {'ExPLoRA': [0.8, 0.8, 0.86]},
    }
    lines = results_table(results).splitlines()
    assert (
        lines[0]
        == '| measure | model | seed 0 | seed 1 | seed 2 | mean ± SD (3 seeds) |'
    )
    sd = 100 * statistics.stdev([0.8, 0.8, 0.86])
    assert lines[-1].endswith(f'| 80.0 % | 80.0 % | 86.0 % | 82.0 ± {sd:.1f} % |')
    assert '| 0.2000 | 0.2500 | 0.3000 | 0.2500 ± 0.0500 |' in lines[2]
    single = results_table(
        {
            **results,
            'seeds': [4],
            'reconstruction_mse': {'a': [0.5]},
            'linear_probe_accuracy': {},
            'lora_finetune_accuracy': {},
        }
    )
    assert single.splitlines() == [
        '| measure | model | seed 4 |',
        '| --- | --- | ---: |',
        '| masked reconstruction MSE (held-out, lower is better) | a | 0.5000 |',
    ]


def test_finetune_lr_scales_with_batch_size() -> None:
    config = DemoConfig(finetune_base_lr=1e-3, finetune_batch_size=64)
    assert config.finetune_lr == pytest.approx(1e-3 * 64 / 256)


#: Two blocks 32 wide, a few steps: every stage in seconds.
TINY = DemoConfig(
    embed_dim=32,
    depth=2,
    heads=2,
    channel_embed_dim=8,
    decoder_dim=32,
    decoder_depth=1,
    decoder_heads=2,
    source_steps=3,
    explora_steps=3,
    batch_size=8,
    finetune_epochs=1,
    map_stride=16,
)


@pytest.mark.slow
def test_demo_is_repeatable_and_writes_its_products(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_demo(output=tmp_path / 'a', config=TINY, seed=3)
    out = capsys.readouterr().out
    second = run_demo(output=tmp_path / 'b', config=TINY, seed=3)
    table = (tmp_path / 'a' / 'results.md').read_text().split('\n\n', 1)[1]
    assert table == (tmp_path / 'b' / 'results.md').read_text().split('\n\n', 1)[1]
    for key in (
        'reconstruction_mse',
        'linear_probe_accuracy',
        'lora_finetune_accuracy',
        'map_agreement',
    ):
        assert first[key] == second[key]
    assert table.strip() in out
    saved = json.loads((tmp_path / 'a' / 'results.json').read_text())
    assert saved['seeds'] == [3] and saved['chips'] == {'train': 674, 'test': 196}
    for path in (first['outputs'][k] for k in first['outputs']):
        assert Path(path).is_file(), path
        assert path in out

    with rasterio.open(scene_path()) as scene:
        crs, bounds = scene.crs, scene.bounds
    # The land-cover map: a COG of class indices in the scene's CRS.
    demo_map = first['outputs']['land-cover map (COG)']
    with rasterio.open(demo_map) as src:
        assert src.crs == crs
        assert src.tags(ns='IMAGE_STRUCTURE').get('LAYOUT') == 'COG'
        assert src.count == 1 and src.res == (160.0, 160.0)
        classes = np.unique(src.read(1))
        assert set(classes.tolist()) <= set(range(len(CLASSES)))
        assert bounds.left <= src.bounds.left and src.bounds.right <= bounds.right
    polygons = gpd.read_file(first['outputs']['land-cover polygons (GeoPackage)'])
    assert polygons.crs == crs and polygons.is_valid.all()
    assert set(polygons['label']) <= set(CLASSES)
    for name in ('reconstructions.png', 'landcover.png', 'summary.png'):
        with open(tmp_path / 'a' / name, 'rb') as handle:
            assert handle.read(8) == b'\x89PNG\r\n\x1a\n'

    # The classifier carries its input spec, and `explora-geo predict` reads it.
    checkpoint = first['outputs']['classifier (explora-geo predict CKPT)']
    spec = InputSpec.from_dict(
        torch.load(checkpoint, weights_only=True)[INPUT_SPEC_KEY]
    )
    assert spec.normalization == SENTINEL2.normalization('satmae')
    assert (spec.img_size, spec.patch_size, spec.classes) == (32, 8, CLASSES)
    # Fine-tuned with the paper's protocol: warm-up + cosine, drop-path, AdamW
    # weight decay, learning rate scaled with the batch size.
    hparams = torch.load(checkpoint, weights_only=True)['hyper_parameters']
    protocol = hparams['protocol']
    assert protocol['scheduler'] == 'cosine'
    assert protocol['warmup_epochs'] == TINY.finetune_warmup_epochs == 1.0
    assert protocol['drop_path_rate'] == TINY.finetune_drop_path == 0.2
    assert protocol['weight_decay'] == TINY.finetune_weight_decay == 0.05
    assert hparams['lr'] == pytest.approx(TINY.finetune_base_lr * 32 / 256)
    # Nothing but the checkpoint, the raster and the output: the CLI runs.
    raster = tmp_path / 'cli.tif'
    assert main(['predict', checkpoint, str(scene_path()), '-o', str(raster)]) == 0
    with rasterio.open(raster) as src:
        assert src.crs == crs and src.count == len(CLASSES)
    # With the demo's overlap and a class map, the CLI writes the demo's map.
    raster = tmp_path / 'cli_classes.tif'
    args = ['--overlap', '16', '--output', 'classes']
    assert (
        main(['predict', checkpoint, str(scene_path()), '-o', str(raster), *args]) == 0
    )
    with rasterio.open(raster) as src, rasterio.open(demo_map) as expected:
        assert np.array_equal(src.read(), expected.read())
        assert src.transform == expected.transform
