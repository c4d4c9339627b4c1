"""Downstream protocols: schedules, optimiser groups, probe sweeps, temporal batches."""

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from explora_geo.datamodules import FMoWTemporalDataModule
from explora_geo.tasks.classification import ClassificationTask, probe_features
from explora_geo.tasks.protocols import (
    LoRAConfig,
    ProbeSpec,
    ProtocolConfig,
    build_optimizer,
)
from explora_geo.tasks.segmentation import SemanticSegmentationTask
from tests.tasks.optim_config import optimizer_config

TINY: dict[str, Any] = {'depth': 2, 'embed_dim': 32, 'num_heads': 2, 'img_size': 28}
TINY4 = {**TINY, 'depth': 4}


class Images(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 8, classes: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 28, 28, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'image': self.images[i], 'label': self.labels[i]}


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self.lrs.append([g['lr'] for g in optimizer.param_groups])


def fit(
    task: LightningModule,
    tmp_path: Path,
    epochs: int,
    batch_size: int = 2,
    accumulate: int = 1,
    callbacks: list[Callback] | None = None,
    data: Dataset[Any] | None = None,
    val_every: int = 1,
) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accumulate_grad_batches=accumulate,
        check_val_every_n_epoch=val_every,
        callbacks=callbacks or [],
        default_root_dir=tmp_path,
    )
    data = data or Images()
    trainer.fit(task, DataLoader(data, batch_size=batch_size), DataLoader(data, 8))
    return trainer


def expected_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize(
    ('accumulate', 'warmup_epochs', 'warmup', 'total'),
    [(2, 1.0, 2, 6), (1, 0.5, 2, 12)],
)
def test_cosine_schedule_per_step(
    tmp_path: Path, accumulate: int, warmup_epochs: float, warmup: int, total: int
) -> None:
    # 8 images in batches of 2: 4 batches per epoch, 3 epochs.
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        lr=0.1,
        protocol={
            'min_lr': 0.001,
            'scheduler': 'cosine',
            'warmup_epochs': warmup_epochs,
        },
        model_kwargs=TINY,
    )
    record = RecordLR()
    fit(task, tmp_path, epochs=3, accumulate=accumulate, callbacks=[record])
    assert len(record.lrs) == total
    for step, lrs in enumerate(record.lrs):
        expected = 0.1 * expected_factor(step, warmup, total, 0.01)
        assert lrs == pytest.approx([expected] * len(lrs), rel=1e-9)
    # The last step decays to just above min_lr, the warm-up peaks at lr.
    assert record.lrs[warmup][0] == pytest.approx(0.1)


def test_plateau_is_the_default() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino', num_classes=3, patience=3, model_kwargs=TINY
    )
    config = optimizer_config(task)
    scheduler = config['lr_scheduler']
    assert type(scheduler['scheduler']).__name__ == 'ReduceLROnPlateau'
    assert scheduler['monitor'] == 'val_loss'
    assert scheduler['scheduler'].patience == 3


def test_cosine_needs_a_trainer() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        protocol={'scheduler': 'cosine'},
        model_kwargs=TINY,
    )
    with pytest.raises(ValueError, match='needs the trainer'):
        task.configure_optimizers()


def test_layer_decay_and_weight_decay_groups() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        finetune='full',
        lr=1.0,
        protocol={'weight_decay': 0.05, 'layer_decay': 0.5},
        model_kwargs=TINY,
    )
    optimizer = optimizer_config(task)['optimizer']
    by_param = {
        id(p): (g['lr'], g['weight_decay'])
        for g in optimizer.param_groups
        for p in g['params']
    }
    names = dict(task.named_parameters())
    assert len(by_param) == len(names)
    # timm's layers: 0 = embeddings, 1..depth = blocks (the final norm with the
    # last), depth + 1 = the head.
    expected = {
        'model.patch_embed.proj.weight': (0.5**3, 0.05),
        'model.cls_token': (0.5**3, 0.0),
        'model.pos_embed': (0.5**3, 0.0),
        'model.blocks.0.attn.qkv.weight': (0.5**2, 0.05),
        'model.blocks.0.norm1.bias': (0.5**2, 0.0),
        'model.blocks.1.mlp.fc2.weight': (0.5, 0.05),
        'model.norm.weight': (0.5, 0.0),
        'model.head.weight': (1.0, 0.05),
        'model.head.bias': (1.0, 0.0),
    }
    for name, (lr, wd) in expected.items():
        assert by_param[id(names[name])] == pytest.approx((lr, wd)), name


def test_optimizer_without_layer_decay_excludes_1d_from_decay() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model[1].requires_grad_(False)
    optimizer = build_optimizer('sgd', model, 0.5, 0.1)
    assert type(optimizer).__name__ == 'SGD'
    assert optimizer.defaults['momentum'] == 0.9
    groups = [
        (len(g['params']), g['weight_decay'], g['lr']) for g in optimizer.param_groups
    ]
    assert groups == [(1, 0.1, 0.5), (1, 0.0, 0.5)]
    with pytest.raises(ValueError, match='layer_decay'):
        build_optimizer('adamw', model, 0.5, 0.1, layer_decay=0)
    with pytest.raises(ValueError, match="'adamw' or 'sgd'"):
        build_optimizer('lamb', model, 0.5, 0.1)


def test_drop_path_and_label_smoothing() -> None:
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        protocol={'drop_path_rate': 0.2, 'label_smoothing': 0.1},
        model_kwargs=TINY,
    )
    # timm spaces the rates linearly over the blocks, the last at the full rate.
    assert task.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert isinstance(task.model.blocks[0].drop_path1, nn.Identity)  # rate 0
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    logp = logits.log_softmax(-1)
    expected = -(0.9 * logp[0, 0] + 0.1 * logp[0].mean())
    torch.testing.assert_close(task.criterion(logits, target), expected)
    with pytest.raises(ValueError, match='label_smoothing'):
        ClassificationTask(
            num_classes=3, protocol={'label_smoothing': 1.0}, model_kwargs=TINY
        )


@pytest.mark.parametrize(
    ('field', 'value', 'message'),
    [
        ('optimizer', 'lamb', "optimizer must be 'adamw' or 'sgd', got 'lamb'"),
        ('scheduler', 'step', "scheduler must be 'plateau' or 'cosine', got 'step'"),
        ('weight_decay', -0.1, 'weight_decay must be >= 0, got -0.1'),
        ('warmup_epochs', -1, 'warmup_epochs must be >= 0, got -1'),
        ('min_lr', -1e-6, 'min_lr must be >= 0, got -1e-06'),
        ('layer_decay', 0.0, r'layer_decay must be in \(0, 1\], got 0.0'),
        ('drop_path_rate', 1.0, r'drop_path_rate must be in \[0, 1\), got 1.0'),
        ('label_smoothing', -0.1, r'label_smoothing must be in \[0, 1\), got -0.1'),
    ],
)
def test_protocol_config_names_the_bad_field(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ProtocolConfig(**{field: value})


def test_lora_config_is_checked_as_an_adapter() -> None:
    lora = LoRAConfig(rank=4, alpha=2.0, targets=['q', 'fc1'], dropout=0.1)  # type: ignore[arg-type]
    assert lora.targets == ('q', 'fc1')
    adapter = lora.adapter(('head.*',))
    assert (adapter.rank, adapter.alpha, adapter.targets) == (4, 2.0, ('q', 'fc1'))
    assert (adapter.dropout, adapter.trainable) == (0.1, ('head.*',))
    assert (adapter.unfrozen_blocks, adapter.train_norms) == ((), False)
    with pytest.raises(ValueError, match='targets must be distinct names'):
        LoRAConfig(targets=('q', 'x'))
    with pytest.raises(ValueError, match='alpha must be > 0'):
        LoRAConfig(alpha=0.0)


def test_configs_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    from explora_geo.inference.cli import load_task

    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        lora={'rank': 4, 'targets': ['q', 'k', 'v']},
        protocol={'scheduler': 'cosine', 'min_lr': 1e-5, 'label_smoothing': 0.2},
        model_kwargs=TINY,
    )
    protocol = ProtocolConfig(scheduler='cosine', min_lr=1e-5, label_smoothing=0.2)
    lora = LoRAConfig(rank=4, targets=('q', 'k', 'v'))
    assert (task.protocol, task.lora) == (protocol, lora)
    # Every field is recorded, as plain data, whatever was given.
    assert task.hparams['protocol'] == {
        'optimizer': 'adamw',
        'weight_decay': 0.01,
        'scheduler': 'cosine',
        'warmup_epochs': 0.0,
        'min_lr': 1e-5,
        'layer_decay': 1.0,
        'drop_path_rate': 0.0,
        'label_smoothing': 0.2,
    }
    assert task.hparams['lora'] == {
        'rank': 4,
        'alpha': 8.0,
        'targets': ['q', 'k', 'v'],
        'dropout': 0.0,
    }
    trainer = fit(task, tmp_path, epochs=1)
    path = tmp_path / 'task.ckpt'
    trainer.save_checkpoint(path)
    loaded = load_task(path)
    assert isinstance(loaded, ClassificationTask)
    assert (loaded.protocol, loaded.lora) == (protocol, lora)
    assert loaded.criterion.label_smoothing == 0.2
    assert loaded.model.blocks[0].attn.qkv.lora_A.shape[:2] == (3, 4)


def test_segmentation_label_smoothing() -> None:
    task = SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        num_classes=3,
        ignore_index=2,
        protocol={'label_smoothing': 0.1},
        decoder_channels=16,
        model_kwargs={**TINY, 'img_size': 32},
    )
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    expected = nn.functional.cross_entropy(
        logits, target, ignore_index=2, label_smoothing=0.1
    )
    torch.testing.assert_close(task.criterion(logits, target), expected)


def test_label_smoothing_needs_cross_entropy() -> None:
    from explora_geo.tasks.detection import ObjectDetectionTask

    with pytest.raises(ValueError, match='ObjectDetectionTask has no loss option'):
        ObjectDetectionTask(
            backbone='explora_vitb_dino',
            protocol={'label_smoothing': 0.1},
            fpn_channels=16,
            model_kwargs={**TINY, 'img_size': 32},
        )
    with pytest.raises(ValueError, match="ClassificationTask has loss='focal'"):
        ClassificationTask(
            model='explora_vitb_dino',
            num_classes=3,
            loss='focal',
            protocol={'label_smoothing': 0.1},
            model_kwargs=TINY,
        )


def test_segmentation_protocol_options() -> None:
    task = SemanticSegmentationTask(
        backbone='explora_vitb_dino',
        num_classes=2,
        finetune='full',
        lr=1.0,
        protocol={'layer_decay': 0.5, 'drop_path_rate': 0.1},
        decoder_channels=16,
        model_kwargs={**TINY, 'img_size': 32},
    )
    vit = task.model.encoder.vit
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    optimizer = optimizer_config(task)['optimizer']
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    # A ViT without a head: its last block is timm's top layer, at lr.
    assert lr_of[id(vit.blocks[0].attn.qkv.weight)] == pytest.approx(0.5)
    assert lr_of[id(vit.blocks[1].attn.qkv.weight)] == pytest.approx(1.0)
    decoder = next(p for p in task.model.decoder.parameters() if p.requires_grad)
    assert lr_of[id(decoder)] == 1.0


def sweep_task(**kwargs: Any) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(
        model='explora_vitb_dino',
        num_classes=4,
        protocol={'optimizer': 'sgd', 'weight_decay': 0.0, 'scheduler': 'cosine'},
        **{
            'finetune': 'linear_probe',
            'model_kwargs': TINY4,
            'probe_lrs': (0.0, 0.5),
            **kwargs,
        },
    )


def test_sweep_heads_and_feature_shapes() -> None:
    task = sweep_task(probe_pooling=('token', 'token+avg', 'avg'))
    assert task.probes is not None
    names = [s.name for s in task.probes.specs]
    # 2 block counts x 2 class-token poolings x 2 rates + the mean alone x 2 rates.
    assert len(names) == 10 and len(set(names)) == 10
    d = 32
    widths = {s.features: s.in_features(d) for s in task.probes.specs}
    assert widths == {
        (1, 'token'): d,
        (4, 'token'): 4 * d,
        (1, 'token+avg'): 2 * d,
        (4, 'token+avg'): 5 * d,
        (1, 'avg'): d,
    }
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        inputs = task.sweep_features(x, list(widths))
        vit = task.model
        tokens = vit.forward_intermediates(x, indices=4, norm=True, output_fmt='NLC')[1]
        cls = [
            vit.forward_intermediates(
                x, indices=4, norm=True, return_prefix_tokens=True, output_fmt='NLC'
            )[1][i][1][:, 0]
            for i in range(4)
        ]
        for key, value in inputs.items():
            assert value.shape == (2, widths[key])
            torch.testing.assert_close(value, probe_features(vit, x, *key))
        # The definition, spelled out: class tokens of the last 4 blocks, then
        # the mean patch token of the last block, each after the final norm.
        expected = torch.cat([*cls, tokens[-1].mean(dim=1)], dim=-1)
        torch.testing.assert_close(inputs[(4, 'token+avg')], expected)
    for head, spec in zip(task.probes.heads, task.probes.specs, strict=True):
        assert head.in_features == widths[spec.features]
    # Only the heads train; the model's own head is gone.
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable == {
        f'probes.heads.{i}.{k}' for i in range(10) for k in ('weight', 'bias')
    }


def test_sweep_picks_the_best_head(tmp_path: Path) -> None:
    # A head with learning rate 0 never leaves its random initialisation; the
    # other fits 16 images on 32-d features (the mean patch token: a random
    # ViT's class token hardly depends on the image). Validation on the training
    # images must choose the trained head, report its accuracy and predict with it.
    task = sweep_task(probe_blocks=(1,), probe_pooling=('avg',), probe_lrs=(0, 64))
    assert task.probes is not None
    assert [s.lr for s in task.probes.specs] == [0.0, 64.0]
    data = Images(n=16, classes=4, seed=1)
    trainer = fit(task, tmp_path, epochs=8, batch_size=16, data=data, val_every=8)
    metrics = trainer.callback_metrics
    untrained = float(metrics['val_probe/blocks1_avg_lr0'])
    trained = float(metrics['val_probe/blocks1_avg_lr64'])
    assert trained == 1.0 and untrained < 0.75
    assert task.probes.best_spec == ProbeSpec(1, 'avg', 64.0)
    assert float(metrics['val_probe_best_accuracy']) == trained
    assert float(metrics['val_probe_best']) == 1.0
    # The lr-0 head kept its initial weights: its rate really was 0 x 16/256.
    assert float(task.probes.get_parameter('heads.0.bias').detach().abs().max()) == 0.0
    task.eval()
    with torch.no_grad():
        logits = task(data.images)
        features = probe_features(task.model, data.images, 1, 'avg')
        torch.testing.assert_close(logits, task.probes.heads[1](features))
    assert torch.equal(logits.argmax(1), data.labels)
    # A checkpoint restores the choice with the weights.
    trainer.save_checkpoint(tmp_path / 'probe.ckpt')
    restored = ClassificationTask.load_from_checkpoint(
        tmp_path / 'probe.ckpt', weights_only=True
    ).eval()
    assert restored.probes is not None and int(restored.probes.best) == 1
    with torch.no_grad():
        torch.testing.assert_close(restored(data.images), logits)


def test_sweep_rates_scale_with_batch(tmp_path: Path) -> None:
    task = sweep_task(probe_blocks=(1,), probe_pooling=('token',), probe_lrs=(0.2,))
    record = RecordLR()
    fit(task, tmp_path, epochs=1, batch_size=4, callbacks=[record])
    # DinoV2 scales the rates by effective batch / 256; cosine from step 0, no warm-up.
    assert record.lrs[0] == [pytest.approx(0.2 * 4 / 256)]


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'finetune': 'lora'}, "needs finetune='linear_probe'"),
        ({'probe_lrs': ()}, 'at least one rate'),
        ({'probe_pooling': ('cls',)}, 'probe_pooling must be among'),
        ({'probe_blocks': (0,)}, 'probe_blocks'),
        ({'probe_blocks': (1, 5)}, 'more blocks than'),
    ],
)
def test_sweep_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sweep_task(**kwargs)


TEMPORAL: dict[str, Any] = {
    'img_size': 32,
    'patch_size': 8,
    'embed_dim': 64,
    'depth': 2,
    'num_heads': 2,
    'time_embed_dim': 8,
}


def test_batch_timestamps_reach_the_temporal_model(tmp_path: Path) -> None:
    # A batch of the real fMoW temporal datamodule (fixture files) through the
    # task: the model must receive that batch's timestamps.
    torch.manual_seed(0)
    dm = FMoWTemporalDataModule(
        root=os.path.join('tests', 'data', 'fmow'), batch_size=2, image_size=32
    )
    task = ClassificationTask(
        model='explora_vitl_satmae_temporal',
        num_classes=62,
        finetune='lora',
        model_kwargs=TEMPORAL,
    )
    seen: list[torch.Tensor] = []
    forward_features = task.model.forward_features

    def spy(x: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        seen.append(kwargs['timestamps'])
        return forward_features(x, **kwargs)

    task.model.forward_features = spy
    batches: list[dict[str, torch.Tensor]] = []

    class Keep(Callback):
        def on_train_batch_start(
            self, trainer: Trainer, module: LightningModule, batch: Any, idx: int
        ) -> None:
            batches.append(batch)

    trainer = Trainer(
        fast_dev_run=1,
        accelerator='cpu',
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Keep()],
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=dm)
    assert batches and batches[0]['image'].shape[:2] == (2, 3)
    assert torch.equal(seen[0], batches[0]['timestamps'])
    assert len(seen) == 2  # one training and one validation batch
    assert task._model_inputs == {}
    # Outside a step the timestamps are an explicit argument.
    x = batches[0]['image']
    with torch.no_grad():
        logits = task(x, timestamps=batches[0]['timestamps'])
    assert logits.shape == (2, 62)
    torch.testing.assert_close(seen[-1], batches[0]['timestamps'])


@pytest.mark.parametrize(
    ('config', 'adapter'),
    [
        (
            {'peft_type': 'BOFT', 'target_modules': ['qkv'], 'boft_block_size': 4},
            '.boft_',
        ),
        (
            {
                'peft_type': 'IA3',
                'target_modules': ['qkv', 'fc2'],
                'feedforward_modules': ['fc2'],
            },
            '.ia3_l',
        ),
    ],
)
def test_hf_peft_baselines(config: dict[str, Any], adapter: str) -> None:
    torch.manual_seed(0)
    plain = ClassificationTask(
        model='explora_vitb_dino', num_classes=3, finetune='full', model_kwargs=TINY
    ).eval()
    torch.manual_seed(0)
    task = ClassificationTask(
        model='explora_vitb_dino',
        num_classes=3,
        finetune='peft',
        peft_config=config,
        model_kwargs=TINY,
    ).eval()
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert {'model.head.weight', 'model.head.bias'} <= trainable
    others = trainable - {'model.head.weight', 'model.head.bias'}
    assert others and all(adapter in n for n in others)
    # Both adapters start as the identity: the same outputs as the plain ViT.
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(task(x), plain(x), atol=1e-5, rtol=0)
    loss = task.train()(x).square().mean()
    loss.backward()
    assert all(task.get_parameter(n).grad is not None for n in others)


def test_peft_mode_validation() -> None:
    with pytest.raises(ValueError, match='go together'):
        ClassificationTask(num_classes=3, finetune='peft', model_kwargs=TINY)
    with pytest.raises(ValueError, match='AdaLoRA'):
        ClassificationTask(
            model='explora_vitb_dino',
            num_classes=3,
            finetune='peft',
            peft_config={
                'peft_type': 'ADALORA',
                'target_modules': ['qkv'],
                'total_step': 10,
            },
            model_kwargs=TINY,
        )


def test_detection_protocol_options() -> None:
    from explora_geo.tasks.detection import ObjectDetectionTask

    task = ObjectDetectionTask(
        backbone='explora_vitb_dino',
        finetune='full',
        lr=1.0,
        protocol={'layer_decay': 0.5, 'drop_path_rate': 0.1},
        fpn_channels=16,
        model_kwargs={**TINY, 'img_size': 32},
    )
    vit = task.model.backbone.body.vit
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    config = optimizer_config(task)
    optimizer = config['optimizer']
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    assert lr_of[id(vit.blocks[0].attn.qkv.weight)] == pytest.approx(0.5)
    head = next(p for p in task.model.roi_heads.parameters() if p.requires_grad)
    assert lr_of[id(head)] == 1.0
    # TorchGeo's plateau schedule on the detection metric by default.
    scheduler = config['lr_scheduler']
    assert scheduler['monitor'] == task.monitor
    assert scheduler['scheduler'].mode == task.mode
