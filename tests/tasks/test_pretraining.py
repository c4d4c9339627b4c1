"""The shared pre-training base: grouped arguments, plain-data hparams, input spec."""

import math
import os
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torchgeo.main import main

from explora_geo.adapter import ExPLoRAConfig, lora_layers
from explora_geo.export import export_from_checkpoint, merge_delta, read_record
from explora_geo.sensors import INPUT_SPEC_KEY, Normalization
from explora_geo.tasks.explora_dinov2 import ExPLoRADINOv2
from explora_geo.tasks.explora_mae import ExPLoRAMAE
from explora_geo.tasks.pretraining import (
    OptimizationConfig,
    as_config,
    warmup_cosine,
)
from tests.tasks.test_explora_dinov2 import task_kwargs as dino_kwargs
from tests.tasks.tiny_mae import (
    IMG,
    TINY,
    loader,
    single_thread,  # noqa: F401  (autouse fixture)
    task_kwargs,
    trainer,
)

RGB = Normalization('unit', ('R', 'G', 'B'), scale=255.0)


def test_every_adapter_field_reaches_the_encoder() -> None:
    adapter = {
        'unfrozen_blocks': [0],
        'rank': 2,
        'alpha': 4.0,
        'targets': ['q'],
        'dropout': 0.25,
        'train_norms': False,
        'train_cls_token': False,
        'train_patch_embed': True,
        'train_pos_embed': True,
        'trainable': [],
        'blocks': 'blocks',
    }
    task = ExPLoRAMAE(**task_kwargs(decoder_lora_rank=0) | {'adapter': adapter})
    assert task.encoder.explora_config == ExPLoRAConfig.from_dict(adapter)
    (layer,) = lora_layers(task.encoder)
    assert layer.rank == 2 and layer.scaling == 2.0
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.25
    trainable = {n for n, p in task.encoder.named_parameters() if p.requires_grad}
    assert not any('norm' in n for n in trainable if not n.startswith('blocks.0.'))
    assert 'cls_token' not in trainable
    assert {'pos_embed', 'patch_embed.proj.weight'} <= trainable
    # Stored as plain data, as checkpoints read with weights_only=True need.
    assert task.hparams['adapter'] == adapter
    assert task.hparams['optimization']['betas'] == [0.9, 0.95]


def test_config_mappings_are_checked() -> None:
    assert as_config(OptimizationConfig, {'lr': 2.0}).lr == 2.0
    with pytest.raises(
        ValueError, match=r"unknown OptimizationConfig fields \['lr_rate'\]"
    ):
        as_config(OptimizationConfig, {'lr_rate': 2.0})
    with pytest.raises(TypeError, match='expected a OptimizationConfig or a mapping'):
        as_config(OptimizationConfig, 3)
    with pytest.raises(ValueError, match="lr_scaling must be 'sqrt'"):
        OptimizationConfig(lr_scaling='cubic')  # type: ignore[arg-type]


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    task = ExPLoRAMAE(**task_kwargs(lr=1e-2, lr_scaling='none'))
    saver = ModelCheckpoint(dirpath=tmp_path / 'ckpt', save_last=True)
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=True, callbacks=[saver])
    t.fit(task, loader())
    ckpt = tmp_path / 'ckpt' / 'last.ckpt'
    raw = torch.load(ckpt, weights_only=True)
    assert raw['hyper_parameters']['adapter']['rank'] == 4
    loaded = ExPLoRAMAE.load_from_checkpoint(ckpt, weights_only=True)
    assert loaded.adapter == task.adapter
    assert loaded.optimization == task.optimization
    assert loaded.objective_config == task.objective_config


def test_optimizer_follows_the_optimization_config(tmp_path: Path) -> None:
    opt = {'lr': 0.1, 'lr_scaling': 'none', 'min_lr': 0.0, 'warmup_steps': 2}
    task = ExPLoRAMAE(**task_kwargs(betas=(0.8, 0.9), weight_decay=0.05, **opt))
    lrs: list[float] = []

    class Record(lightning.Callback):
        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]['lr'])

    trainer(tmp_path, max_steps=4, callbacks=[Record()]).fit(
        task, loader(n=4, batch_size=1)
    )
    group = task.trainer.optimizers[0].param_groups[0]
    assert group['betas'] == (0.8, 0.9) and group['weight_decay'] == 0.05
    expected = [0.1 * warmup_cosine(s, 2, 4, 0.0) for s in range(4)]
    assert lrs == pytest.approx(expected)
    assert expected[:2] == pytest.approx([0.05, 0.1])
    assert expected[3] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_gradient_clipping_of_the_mae_task() -> None:
    task = ExPLoRAMAE(**task_kwargs(clip_grad=0.5))
    params = [p for p in task.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    task.trainer = trainer('.')
    task.configure_gradient_clipping(torch.optim.SGD(params, lr=0.1))
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
    )
    assert float(norm) == pytest.approx(0.5, rel=1e-5)


class Unit8Bit(lightning.LightningDataModule):
    """Images as the pre-training datamodules give them, with their normalization."""

    normalization = RGB

    def train_dataloader(self) -> Any:
        return loader()


def test_export_records_the_datamodule_normalization(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        task = ExPLoRAMAE(**task_kwargs())
        t = trainer(tmp_path, max_steps=1)
        t.fit(task, datamodule=Unit8Bit())
        files = task.export(tmp_path / 'out', 'x')
    finally:
        os.umask(old)
    for path in files.values():
        assert (path.stat().st_mode & 0o777) == 0o644
        record = read_record(path)
        assert record.model == TINY and record.img_size == IMG
        assert record.global_step == 1
        assert record.input_spec is not None
        # The MAE objective standardises 'unit' RGB with ImageNet statistics
        # after its crops: the encoder's input is that composition.
        assert record.input_spec.normalization == task.input_normalization(RGB)
        assert record.input_spec.patch_size == 8
    checkpoint = torch.load(files['encoder'], weights_only=True)
    assert checkpoint[INPUT_SPEC_KEY]['normalization']['kind'] == 'standard'
    x = torch.rand(1, 3, 4, 4) * 255
    torch.testing.assert_close(
        task.input_normalization(RGB)(x), task.objective.normalize(x / 255)
    )
    assert INPUT_SPEC_KEY not in checkpoint['hyper_parameters']


def test_dinov2_records_its_crop_normalization() -> None:
    task = ExPLoRADINOv2(**dino_kwargs())
    norm = task.input_normalization(RGB)
    x = torch.rand(1, 3, 4, 4) * 255
    expected = task.objective.multicrop.normalize(x / 255)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    satmae = Normalization('satmae', ('R',), (1.0,), (2.0,))
    assert task.input_normalization(satmae) is satmae


def test_yaml_reaches_every_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        'model': {
            'class_path': 'explora_geo.tasks.ExPLoRAMAE',
            'init_args': {
                'adapter': {'dropout': 0.1, 'train_norms': False},
                'optimization': {'lr': 0.5},
                'objective': {'mask_ratio': 0.6},
            },
        }
    }
    path = tmp_path / 'c.yaml'
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    with pytest.raises(SystemExit):
        main(['fit', '--config', str(path), '--print_config'])
    printed = yaml.safe_load(capsys.readouterr().out)['model']['init_args']
    assert printed['adapter']['dropout'] == 0.1
    assert printed['adapter']['train_norms'] is False
    assert printed['adapter']['rank'] == 32  # the task's default, not the class's
    assert printed['optimization']['lr'] == 0.5
    assert printed['optimization']['betas'] == [0.9, 0.95]
    assert printed['objective'] == {'mask_ratio': 0.6, 'norm_pix_loss': True}


def test_offline_export_keeps_the_input_spec(tmp_path: Path) -> None:
    task = ExPLoRAMAE(**task_kwargs())
    saver = ModelCheckpoint(dirpath=tmp_path / 'ckpt', save_last=True)
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=True, callbacks=[saver])
    t.fit(task, datamodule=Unit8Bit())
    files = export_from_checkpoint(tmp_path / 'ckpt' / 'last.ckpt', tmp_path / 'out')
    spec = read_record(files['encoder']).input_spec
    assert spec is not None and spec.normalization == task.input_normalization(RGB)
    merged = merge_delta(files['delta'], tmp_path / 'merged.ckpt')
    assert read_record(merged).input_spec == spec
    with pytest.raises(ValueError, match=r'not an encoder export .*\[.state_dict.\]'):
        torch.save({'state_dict': {}}, tmp_path / 'bare.ckpt')
        read_record(tmp_path / 'bare.ckpt')
