"""Checkpoints trained the way every recipe trains (torchgeo fit) predict with no options."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torchgeo.main import main as torchgeo_main

from explora_geo.cli import main
from explora_geo.sensors import INPUT_SPEC_KEY, SENTINEL2, InputSpec

ROOT = Path(__file__).parents[2]
S2_BANDS = ROOT / 'tests' / 'data' / 's2_bands'


def fit(args: list[str], root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(root)
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    torchgeo_main(
        [
            'fit',
            *args,
            '--trainer.max_epochs=1',
            '--trainer.limit_train_batches=2',
            '--trainer.limit_val_batches=1',
            '--trainer.accelerator=cpu',
            '--trainer.devices=1',
            '--trainer.logger=false',
            '--trainer.enable_progress_bar=false',
            f'--trainer.default_root_dir={root}',
        ]
    )
    (checkpoint,) = root.rglob('*.ckpt')
    return checkpoint


@pytest.mark.slow
def test_recipe_trained_classifier_predicts_band_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = fit(
        [
            '--config',
            str(ROOT / 'recipes' / 'fmow_sentinel_finetune.yaml'),
            '--model.init_args.weights=null',
            '--model.init_args.model=explora_vitb_satmae_group',
            '--model.init_args.model_kwargs={img_size: 96, depth: 2, embed_dim: 64, '
            'num_heads: 2, channel_embed_dim: 32}',
            f'--data.dict_kwargs.root={ROOT / "tests" / "data" / "fmow_sentinel"}',
            '--data.init_args.batch_size=2',
            '--data.init_args.num_workers=0',
        ],
        tmp_path,
        monkeypatch,
    )
    saved = torch.load(checkpoint, weights_only=True)
    assert saved['hyper_parameters']['_class_path'] == (
        'explora_geo.tasks.ClassificationTask'
    )
    spec = InputSpec.from_dict(saved[INPUT_SPEC_KEY])
    assert (spec.img_size, spec.patch_size) == (96, 8)
    # The Sentinel-2 product's band files, the checkpoint and an output: nothing else.
    out = tmp_path / 'chips.tif'
    with warnings.catch_warnings():
        # Without a recorded normalisation the run warns, and still predicts.
        warnings.simplefilter('ignore')
        assert main(['predict', str(checkpoint), str(S2_BANDS), '-o', str(out)]) == 0
    with rasterio.open(out) as dst:
        # 192 x 160 px at 10 m in 96 px chips without overlap: 2 x 2 chips of 960 m.
        assert dst.shape == (2, 2) and dst.count == 62
        assert dst.transform.a == 960 and dst.crs.to_epsg() == 32618
        assert dst.dtypes[0] == 'uint8'
        np.testing.assert_allclose(dst.read().sum(0) / 254, 1, atol=62 / 254)


BANDS = ['B02', 'B03', 'B04', 'B08']


@pytest.mark.slow
def test_recipe_trained_segmenter_predicts_with_no_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / 'fit_fixtures'))
    config = tmp_path / 'seg.yaml'
    config.write_text(
        """
model:
  class_path: explora_geo.tasks.SemanticSegmentationTask
  init_args:
    model: upernet
    backbone: explora_vitb_dino
    in_channels: 4
    num_classes: 2
    decoder_channels: 16
    model_kwargs: {depth: 2, embed_dim: 32, num_heads: 2, img_size: 32}
data:
  class_path: tiny_segmentation.TinySegmentationDataModule
"""
    )
    checkpoint = fit(['--config', str(config)], tmp_path, monkeypatch)
    saved = torch.load(checkpoint, weights_only=True)
    spec = InputSpec.from_dict(saved[INPUT_SPEC_KEY])
    # Recorded from the datamodule: bands, normalisation and class names.
    assert spec.normalization == SENTINEL2.normalization(
        'standard', ('B2', 'B3', 'B4', 'B8')
    )
    assert spec.classes == ('dark', 'bright') and spec.img_size == 32
    data = np.random.default_rng(0).integers(0, 3000, (4, 70, 90)).astype(np.uint16)
    profile = {
        'driver': 'GTiff',
        'height': 70,
        'width': 90,
        'count': 4,
        'dtype': 'uint16',
        'crs': 'EPSG:32618',
        'transform': from_origin(500_000, 4_170_000, 10, 10),
    }
    # The raster stores its bands in another order, named as Sentinel-2 files do.
    with rasterio.open(tmp_path / 'scene.tif', 'w', **profile) as dst:
        dst.write(data[::-1])
        for i, name in enumerate(BANDS[::-1], start=1):
            dst.set_band_description(i, name)
    out = tmp_path / 'classes.tif'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert (
            main(
                [
                    'predict',
                    str(checkpoint),
                    str(tmp_path / 'scene.tif'),
                    '-o',
                    str(out),
                ]
            )
            == 0
        )
    with rasterio.open(out) as dst, rasterio.open(tmp_path / 'scene.tif') as src:
        assert dst.shape == src.shape and dst.transform == src.transform
        assert dst.crs == src.crs and dst.tags()['labels'] == '["dark", "bright"]'
        assert set(np.unique(dst.read(1))) <= {0, 1}
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
