from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer
from rasterio.transform import from_origin
from torchgeo.tasks import BaseTask

from explora_geo.cli import main
from explora_geo.inference.cli import load_task, parse_bands
from explora_geo.tasks.classification import ClassificationTask
from explora_geo.tasks.detection import ObjectDetectionTask
from explora_geo.tasks.segmentation import SemanticSegmentationTask

TINY = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 32}


def save(task: BaseTask, path: Path) -> Path:
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator='cpu')
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def write_raster(path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 3000, (3, 48, 40)).astype(np.uint16)
    profile = {
        'driver': 'GTiff',
        'height': 48,
        'width': 40,
        'count': 3,
        'dtype': 'uint16',
        'crs': 'EPSG:32618',
        'transform': from_origin(600_000, 4_100_000, 10, 10),
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)
        for i, name in enumerate(['B04', 'B03', 'B02'], start=1):
            dst.set_band_description(i, name)


def test_load_task_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = ClassificationTask(
        model='explora_vitb_dino', num_classes=4, pooling='token', model_kwargs=TINY
    )
    torch.nn.init.normal_(task.model.blocks[0].attn.qkv.lora_B)
    loaded = load_task(save(task, tmp_path / 'cls.ckpt'))
    assert isinstance(loaded, ClassificationTask) and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task.eval()(x))


def test_load_task_errors(tmp_path: Path) -> None:
    detector = ObjectDetectionTask(
        backbone='explora_vitb_dino', fpn_channels=16, model_kwargs=TINY
    )
    with pytest.raises(ValueError, match=r'det\.ckpt: an object detection checkpoint'):
        load_task(save(detector, tmp_path / 'det.ckpt'))
    torch.save({'model': {}}, tmp_path / 'plain.pth')
    with pytest.raises(ValueError, match=r'plain\.pth: not a Lightning checkpoint'):
        load_task(tmp_path / 'plain.pth')


def test_parse_bands() -> None:
    assert parse_bands('B04, B03,2') == ['B04', 'B03', 2]
    assert parse_bands(None) is None


def test_predict_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_raster(tmp_path / 'scene.tif')
    torch.manual_seed(0)
    task = SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        labels=['water', 'field', 'forest'],
        decoder_channels=16,
        model_kwargs=TINY,
    )
    checkpoint = save(task, tmp_path / 'seg.ckpt')
    status = main(
        [
            'predict',
            str(tmp_path / 'scene.tif'),
            '--checkpoint',
            str(checkpoint),
            '--output',
            str(tmp_path / 'classes.tif'),
            '--bands',
            'B02,B03,B04',
            '--tile-size',
            '32',
            '--overlap',
            '8',
            '--vectors',
            str(tmp_path / 'classes.gpkg'),
        ]
    )
    assert status == 0
    assert 'segmentation: 4 tiles' in capsys.readouterr().out
    with rasterio.open(tmp_path / 'classes.tif') as dst:
        assert dst.shape == (48, 40) and dst.crs.to_epsg() == 32618
        assert set(np.unique(dst.read(1))) <= {0, 1, 2}
    frame = gpd.read_file(tmp_path / 'classes.gpkg')
    assert set(frame['label']) <= {'water', 'field', 'forest'}
    assert frame.area.sum() == pytest.approx(48 * 40 * 100)
