import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch import Trainer
from rasterio.transform import from_origin
from torchgeo.tasks import BaseTask

import explora_geo.inference.cli as inference_cli
from explora_geo.cli import main
from explora_geo.inference.cli import group_flat_arguments, load_task, parse_bands
from explora_geo.sensors import INPUT_SPEC_KEY, SENTINEL2
from explora_geo.tasks.classification import TASK_CLASS_KEY, ClassificationTask
from explora_geo.tasks.detection import ObjectDetectionTask
from explora_geo.tasks.segmentation import SemanticSegmentationTask

TINY = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 32}
ROOT = Path(__file__).parents[2]
BANDS = ('B2', 'B3', 'B4')
NORM = SENTINEL2.normalization('standard', BANDS).to_dict()


def save(task: BaseTask, path: Path) -> Path:
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator='cpu')
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def write_raster(path: Path, seed: int = 0) -> None:
    data = np.random.default_rng(seed).integers(0, 3000, (3, 48, 40)).astype(np.uint16)
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


def classifier() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(
        model='explora_vitb_dino',
        num_classes=4,
        labels=['water', 'crop', 'forest', 'urban'],
        pooling='token',
        model_kwargs=TINY,
        normalization=NORM,
    )


def segmenter() -> SemanticSegmentationTask:
    torch.manual_seed(0)
    return SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        labels=['water', 'field', 'forest'],
        decoder_channels=16,
        model_kwargs=TINY,
        normalization=NORM,
    )


def test_load_task_round_trip_and_records(tmp_path: Path) -> None:
    task = classifier()
    torch.nn.init.normal_(task.model.blocks[0].attn.qkv.lora_B)
    path = save(task, tmp_path / 'cls.ckpt')
    saved = torch.load(path, weights_only=True)
    assert (
        saved[TASK_CLASS_KEY] == 'explora_geo.tasks.classification.ClassificationTask'
    )
    assert saved[INPUT_SPEC_KEY]['normalization'] == NORM
    assert saved[INPUT_SPEC_KEY]['classes'] == ['water', 'crop', 'forest', 'urban']
    loaded = load_task(path)
    assert isinstance(loaded, ClassificationTask) and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task.eval()(x))
    # What LightningCLI records: the class path and its instantiator.
    saved['hyper_parameters'] |= {
        '_class_path': 'explora_geo.tasks.SemanticSegmentationTask',
        '_instantiator': 'lightning.pytorch.cli.instantiate_module',
    }
    del saved[TASK_CLASS_KEY]
    seg = save(segmenter(), tmp_path / 'seg.ckpt')
    cli = torch.load(seg, weights_only=True)
    del cli[TASK_CLASS_KEY]
    cli['hyper_parameters'] |= {
        '_class_path': 'explora_geo.tasks.SemanticSegmentationTask',
        '_instantiator': 'lightning.pytorch.cli.instantiate_module',
    }
    torch.save(cli, tmp_path / 'cli.ckpt')
    assert isinstance(load_task(tmp_path / 'cli.ckpt'), SemanticSegmentationTask)


def test_load_task_errors(tmp_path: Path) -> None:
    detector = ObjectDetectionTask(
        backbone='explora_vitb_dino', fpn_channels=16, model_kwargs=TINY
    )
    with pytest.raises(ValueError, match=r'det\.ckpt: an object detection checkpoint'):
        load_task(save(detector, tmp_path / 'det.ckpt'))
    detector_spec = torch.load(tmp_path / 'det.ckpt', weights_only=True)[INPUT_SPEC_KEY]
    assert detector_spec['patch_size'] == 14
    torch.save({'model': {}}, tmp_path / 'plain.pth')
    with pytest.raises(ValueError, match=r'plain\.pth: not a Lightning checkpoint'):
        load_task(tmp_path / 'plain.pth')
    saved = torch.load(save(segmenter(), tmp_path / 's.ckpt'), weights_only=True)
    del saved[TASK_CLASS_KEY]
    torch.save(saved, tmp_path / 'anonymous.ckpt')
    with pytest.raises(ValueError, match='does not record its task class'):
        load_task(tmp_path / 'anonymous.ckpt')
    saved['hyper_parameters']['_class_path'] = 'not_imported_xyz.Task'
    torch.save(saved, tmp_path / 'foreign.ckpt')
    with pytest.raises(ValueError, match='in a module that is not imported'):
        load_task(tmp_path / 'foreign.ckpt')


def test_parse_bands() -> None:
    assert parse_bands('B04, B03,B02') == ['B04', 'B03', 'B02']
    assert parse_bands(None) is None


def test_predict_segmentation_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_raster(tmp_path / 'scene.tif')
    checkpoint = save(segmenter(), tmp_path / 'seg.ckpt')
    common = [str(checkpoint), str(tmp_path / 'scene.tif')]
    status = main(
        [
            'predict',
            *common,
            '-o',
            str(tmp_path / 'c.tif'),
            '--vectors',
            str(tmp_path / 'c.gpkg'),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert 'segmentation: 4 tiles' in out  # 32 px tiles, overlap 8
    assert '32-true' in out  # fp32 unless --precision says otherwise
    with rasterio.open(tmp_path / 'c.tif') as dst:
        assert dst.shape == (48, 40) and dst.crs.to_epsg() == 32618
        assert set(np.unique(dst.read(1))) <= {0, 1, 2}
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        assert dst.overviews(1) == []  # too small for overviews
    frame = gpd.read_file(tmp_path / 'c.gpkg')
    assert set(frame['label']) <= {'water', 'field', 'forest'}
    assert frame.area.sum() == pytest.approx(48 * 40 * 100)
    args = [
        '--output',
        'scores',
        '--scores',
        'float32',
        '--blend',
        'uniform',
        '--no-cog',
        '--compress',
        'zstd',
    ]
    assert main(['predict', *common, '-o', str(tmp_path / 's.tif'), *args]) == 0
    with rasterio.open(tmp_path / 's.tif') as dst:
        assert dst.count == 3 and dst.dtypes[0] == 'float32'
        assert dst.tags(ns='IMAGE_STRUCTURE').get('LAYOUT') != 'COG'
        # Floating-point predictor for float scores.
        assert dst.tags(ns='IMAGE_STRUCTURE')['COMPRESSION'] == 'ZSTD'
        assert dst.tags(ns='IMAGE_STRUCTURE')['PREDICTOR'] == '3'
        np.testing.assert_allclose(dst.read().sum(0), 1, rtol=1e-5)
        fp32 = dst.read()
    capsys.readouterr()
    bf16 = ['-o', str(tmp_path / 'b.tif'), *args, '--precision', 'bf16']
    assert main(['predict', *common, *bf16]) == 0
    assert 'bf16-mixed' in capsys.readouterr().out
    with rasterio.open(tmp_path / 'b.tif') as dst:
        np.testing.assert_allclose(dst.read(), fp32, atol=0.05)
    # The input's bands named on the command line when the file has no names.
    with rasterio.open(tmp_path / 'scene.tif') as src:
        profile, data = src.profile, src.read()
    with rasterio.open(tmp_path / 'unnamed.tif', 'w', **profile) as dst:
        dst.write(data)
    assert (
        main(
            [
                'predict',
                str(checkpoint),
                str(tmp_path / 'unnamed.tif'),
                '-o',
                str(tmp_path / 'u.tif'),
                '--bands',
                'B04,B03,B02',
            ]
        )
        == 0
    )
    with rasterio.open(tmp_path / 'u.tif') as a, rasterio.open(tmp_path / 'c.tif') as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_classification_vectors_are_chips(tmp_path: Path) -> None:
    write_raster(tmp_path / 'scene.tif')
    checkpoint = save(classifier(), tmp_path / 'cls.ckpt')
    out, vectors = tmp_path / 'chips.tif', tmp_path / 'chips.gpkg'
    assert (
        main(
            [
                'predict',
                str(checkpoint),
                str(tmp_path / 'scene.tif'),
                '-o',
                str(out),
                '--vectors',
                str(vectors),
            ]
        )
        == 0
    )
    with rasterio.open(out) as dst:
        # 48 x 40 px in 32 px chips: 2 x 2 chips of 320 m.
        assert dst.shape == (2, 2) and dst.count == 4 and dst.transform.a == 320
        scores = dst.read().astype(float) / 254
    frame = gpd.read_file(vectors)
    assert len(frame) == 4 and frame.crs.to_epsg() == 32618
    assert np.allclose(frame.area, 320 * 320)
    expected = sorted(zip(scores.argmax(0).ravel(), scores.max(0).ravel(), strict=True))
    got = sorted(zip(frame['class'], frame['score'], strict=True))
    for (c1, s1), (c2, s2) in zip(got, expected, strict=True):
        assert c1 == c2 and s1 == pytest.approx(s2)
    assert set(frame['label']) <= {'water', 'crop', 'forest', 'urban'}


def test_compression_level_checked_before_the_model(tmp_path: Path) -> None:
    write_raster(tmp_path / 'scene.tif')
    missing = str(tmp_path / 'no_such.ckpt')
    common = [
        'predict',
        missing,
        str(tmp_path / 'scene.tif'),
        '-o',
        str(tmp_path / 'o.tif'),
    ]
    with pytest.raises(
        ValueError, match=r"'zstd' must be an integer from 1 to 22, got 30"
    ):
        main([*common, '--compress', 'zstd', '--compress-level', '30'])
    with pytest.raises(ValueError, match=r"compress 'lzw' has no levels"):
        main([*common, '--compress', 'lzw', '--compress-level', '2'])
    assert not (tmp_path / 'o.tif').exists()


def test_vectors_checked_before_the_model(tmp_path: Path) -> None:
    write_raster(tmp_path / 'scene.tif')
    missing = str(tmp_path / 'no_such.ckpt')
    with pytest.raises(ValueError, match=r"o\.shp: unsupported vector format '.shp'"):
        main(
            [
                'predict',
                missing,
                str(tmp_path / 'scene.tif'),
                '-o',
                str(tmp_path / 'o.tif'),
                '--vectors',
                str(tmp_path / 'o.shp'),
            ]
        )


DDP = [
    sys.executable, '-m', 'explora_geo.cli', 'predict',
]  # fmt: skip


@pytest.mark.slow
def test_many_rasters_across_two_processes(tmp_path: Path) -> None:
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for i in range(5):
        write_raster(inputs / f'scene{i}.tif', seed=i)
    checkpoint = save(segmenter(), tmp_path / 'seg.ckpt')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    done = subprocess.run(
        [*DDP, str(checkpoint), str(inputs), '-o', str(tmp_path / 'out'), '--devices', '2',
         '--vectors', '.gpkg'],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith('rank ')]
    written = sorted(line.rsplit('-> ', 1)[1] for line in lines)
    # Every raster written once, by one of the two processes, both working.
    assert written == sorted(str(tmp_path / 'out' / f'scene{i}.tif') for i in range(5))
    assert {line.split(':')[0] for line in lines} == {'rank 0', 'rank 1'}
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(
        [f'scene{i}.tif' for i in range(5)] + [f'scene{i}.gpkg' for i in range(5)]
    )
    # The same as a single-process prediction.
    main(
        [
            'predict',
            str(checkpoint),
            str(inputs / 'scene3.tif'),
            '-o',
            str(tmp_path / 'one.tif'),
        ]
    )
    with (
        rasterio.open(tmp_path / 'one.tif') as a,
        rasterio.open(tmp_path / 'out' / 'scene3.tif') as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())


def test_load_task_reads_flat_protocol_and_lora_hyperparameters(tmp_path: Path) -> None:
    # Checkpoints written before the `protocol` and `lora` groups held their
    # fields as separate hyperparameters.
    task = classifier()
    checkpoint = torch.load(save(task, tmp_path / 'c.ckpt'), weights_only=True)
    hparams = dict(checkpoint['hyper_parameters'])
    protocol, lora = hparams.pop('protocol'), hparams.pop('lora')
    hparams |= {f'lora_{k}': v for k, v in lora.items() if k != 'dropout'}
    hparams |= {**protocol, 'weight_decay': 0.125, 'scheduler': 'cosine'}
    checkpoint['hyper_parameters'] = hparams
    torch.save(checkpoint, tmp_path / 'flat.ckpt')
    loaded = load_task(tmp_path / 'flat.ckpt')
    assert loaded.hparams['protocol'] == {
        **protocol,
        'weight_decay': 0.125,
        'scheduler': 'cosine',
    }
    assert loaded.hparams['lora'] == {**lora, 'targets': list(lora['targets'])}
    for name, value in task.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    assert group_flat_arguments({'lr': 1e-3, 'lora_rank': 4}) == {
        'lr': 1e-3,
        'lora': {'rank': 4},
    }


@pytest.mark.parametrize(
    ('flag', 'value', 'message'),
    [
        ('--readers', '0', 'argument --readers: expected an integer >= 1, got 0'),
        (
            '--batch-size',
            '-2',
            'argument --batch-size: expected an integer >= 1, got -2',
        ),
        ('--overlap', '-1', 'argument --overlap: expected an integer >= 0, got -1'),
        ('--tile-size', 'x', "argument --tile-size: expected an integer, got 'x'"),
        ('--gdal-cache', '0', 'argument --gdal-cache: expected an integer >= 1, got 0'),
        ('--devices', '0', 'argument --devices: expected an integer >= 1, got 0'),
    ],
)
def test_predict_refuses_bad_counts_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setattr(inference_cli, 'load_task', lambda path: pytest.fail('ran'))
    with pytest.raises(SystemExit) as exit_info:
        main(['predict', 'm.ckpt', 'in.tif', '-o', 'out.tif', flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
