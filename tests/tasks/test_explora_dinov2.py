import inspect
import math
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from explora_geo import apply_delta, create_model
from explora_geo.adapter import count_trainable_parameters, load_delta
from explora_geo.datamodules import FMoWDataModule
from explora_geo.ssl.dinov2 import vit_tokens
from explora_geo.ssl.schedules import cosine_schedule
from explora_geo.tasks.explora_dinov2 import ExPLoRADINOv2, source_mask_token
from explora_geo.tasks.knn_probe import KNNProbe
from explora_geo.tasks.pretraining import NonFiniteLossError
from tests.data.checkpoints import layouts
from tests.tasks.grouping import grouped

TINY_VIT: dict[str, Any] = {'depth': 2, 'embed_dim': 64, 'num_heads': 2}
FMOW = Path(__file__).parents[1] / 'data' / 'fmow'


def fmow(batch_size: int = 2, **kwargs: Any) -> FMoWDataModule:
    """fMoW-RGB fixture images as pre-training hands them: 64 px, [0, 1]."""
    return FMoWDataModule(
        root=FMOW,
        batch_size=batch_size,
        image_size=64,
        crop_pct=1.0,
        unlabeled=True,
        **kwargs,
    )


def task_kwargs(**overrides: Any) -> dict[str, Any]:
    """D-[L]-r4 on a 2-block, 64-wide ViT/14 at 56 px, 128 prototypes.

    Fields of the adapter, optimisation and objective configs may be given flat.
    """
    flat = {
        'model': 'explora_vitb_dino',
        'img_size': 56,
        'model_kwargs': dict(TINY_VIT),
        'rank': 4,
        'head_hidden_dim': 32,
        'head_bottleneck_dim': 16,
        'num_prototypes': 128,
        'num_local_crops': 2,
        'warmup_steps': 1,
        'freeze_last_layer_steps': 2,
        'teacher_temp_warmup_steps': 2,
        'augmentation_seed': 0,
        **overrides,
    }
    defaults = inspect.signature(ExPLoRADINOv2).parameters
    return grouped(
        flat,
        defaults['adapter'].default,
        defaults['optimization'].default,
        defaults['objective'].default,
    )


class Images(Dataset[dict[str, Tensor]]):
    """Fixed random images in [0, 1], with labels = brightness class."""

    def __init__(self, n: int = 4, size: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        base = torch.rand(n, 3, size, size, generator=g) * 0.3
        self.images = base + 0.6 * self.labels.view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {'image': self.images[i], 'label': self.labels[i]}


def loader(
    n: int = 4, batch_size: int = 2, seed: int = 0
) -> DataLoader[dict[str, Tensor]]:
    return DataLoader(Images(n, seed=seed), batch_size=batch_size, shuffle=False)


def trainer(**kwargs: Any) -> lightning.Trainer:
    defaults: dict[str, Any] = {
        'accelerator': 'cpu',
        'devices': 1,
        'logger': False,
        'enable_checkpointing': False,
        'enable_progress_bar': False,
        'enable_model_summary': False,
    }
    return lightning.Trainer(**{**defaults, **kwargs})


def trainable_state(task: ExPLoRADINOv2) -> dict[str, Tensor]:
    return {
        n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A DinoV2-layout source checkpoint (with mask_token) for the tiny ViT."""
    torch.manual_seed(0)
    state = {k: v * 0.1 for k, v in layouts.dinov2(d=64, depth=2).items()}
    path = tmp_path / 'dinov2_tiny.pth'
    torch.save(state, path)
    return path


def test_defaults_are_the_papers() -> None:
    with torch.device('meta'):
        task = ExPLoRADINOv2()
    h, adapter, opt, objective = (
        task.hparams,
        task.adapter,
        task.optimization,
        task.objective_config,
    )
    assert h['model'] == 'explora_vitl_dino'
    assert tuple(adapter.unfrozen_blocks) == (-1,) and adapter.rank == 64
    assert (opt.lr, opt.lr_scaling, opt.min_lr, opt.patch_embed_lr_mult) == (
        1e-3,
        'sqrt',
        1e-6,
        0.2,
    )
    assert (
        opt.clip_grad,
        objective.freeze_last_layer_steps,
        objective.koleo_loss_weight,
    ) == (
        3.0,
        3000,
        0.1,
    )
    assert (
        objective.momentum_teacher,
        objective.warmup_teacher_temp,
        objective.teacher_temp,
    ) == (
        0.994,
        0.04,
        0.07,
    )
    # D-[L]-r64 on ViT-L: 18.7M trainable encoder values (paper).
    assert count_trainable_parameters(task.encoder) == 18_724_864
    # Head: D -> 2048 -> 2048 -> 256 -> 65536 prototypes, each with its gain.
    assert count_trainable_parameters(task.objective.head) == (
        1024 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 256 + 256 + 256 * 65536 + 65536
    )
    # The teacher only holds the trainable tensors.
    assert (
        sum(b.numel() for b in task.objective.teacher_encoder.buffers()) == 18_724_864
    )
    global_crop = task.objective.multicrop.global1[0]
    local_crop = task.objective.multicrop.local[0]
    assert isinstance(global_crop, K.AugmentationBase2D)
    assert isinstance(local_crop, K.AugmentationBase2D)
    assert global_crop.flags['size'] == (224, 224)
    assert local_crop.flags['size'] == (98, 98)
    assert task.objective.multicrop.num_local_crops == 8
    assert task.objective.grid == (16, 16)
    assert task.objective.masking is not None and task.objective.masking.mask_ratio == (
        0.1,
        0.5,
    )


def test_vit_tokens(source: Path) -> None:
    encoder = create_model(
        'explora_vitb_dino',
        weights=source,
        num_classes=0,
        img_size=56,
        dynamic_img_size=True,
        **TINY_VIT,
    ).eval()
    assert isinstance(encoder, VisionTransformer)
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(vit_tokens(encoder, x), encoder.forward_features(x))
        # Fully masked images: the patch content no longer matters.
        masks = torch.ones(2, 16, dtype=torch.bool)
        token = torch.randn(1, 64)
        a = vit_tokens(encoder, x, masks, token)
        b = vit_tokens(encoder, torch.rand(2, 3, 56, 56), masks, token)
        torch.testing.assert_close(a, b)
        # Masked positions get the token before the position embedding.
        partial = torch.zeros(2, 16, dtype=torch.bool)
        partial[:, 3] = True
        assert not torch.allclose(
            vit_tokens(encoder, x, partial, token), vit_tokens(encoder, x)
        )
    with pytest.raises(
        ValueError,
        match=r'masks of shape \(2, 9\) do not fit 2 images of \(4, 4\) patches',
    ):
        vit_tokens(encoder, x, torch.ones(2, 9, dtype=torch.bool), token)
    with pytest.raises(ValueError, match='masks need a mask_token'):
        vit_tokens(encoder, x, masks)


def test_mask_token_from_source(source: Path) -> None:
    expected = torch.load(source, weights_only=True)['mask_token']
    task = ExPLoRADINOv2(**task_kwargs(weights=str(source)))
    torch.testing.assert_close(task.objective.mask_token, expected)
    assert not task.objective.mask_token.requires_grad
    assert source_mask_token(None) is None
    assert torch.equal(
        ExPLoRADINOv2(**task_kwargs()).objective.mask_token, torch.zeros(1, 64)
    )


def test_fit_bf16_logs_losses_and_counts() -> None:
    task = ExPLoRADINOv2(**task_kwargs())
    t = trainer(max_steps=2, precision='bf16-mixed')
    t.fit(task, datamodule=fmow())
    metrics = t.callback_metrics
    for key in (
        'train_loss',
        'train_dino_local',
        'train_dino_global',
        'train_koleo',
        'train_ibot',
    ):
        assert torch.isfinite(metrics[key]), key
    parts = sum(
        float(metrics[k])
        for k in ('train_dino_local', 'train_dino_global', 'train_koleo', 'train_ibot')
    )
    assert float(metrics['train_loss']) == pytest.approx(parts, rel=1e-4)
    assert float(metrics['train_ibot']) > 0 and float(metrics['train_dino_local']) > 0
    assert float(metrics['trainable_params']) == count_trainable_parameters(task)
    assert float(metrics['trainable_params_encoder']) == count_trainable_parameters(
        task.encoder
    )
    assert float(metrics['teacher_temp']) == pytest.approx(
        0.07
    )  # end of the 2-step warm-up
    assert t.global_step == 2


class Record(lightning.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []
        self.lrs: list[list[float]] = []

    def on_train_batch_end(
        self, trainer: lightning.Trainer, pl_module: Any, *args: Any
    ) -> None:
        self.states.append(trainable_state(pl_module))
        self.lrs.append([g['lr'] for g in trainer.optimizers[0].param_groups])


def test_last_layer_frozen_for_the_first_steps() -> None:
    task = ExPLoRADINOv2(**task_kwargs(freeze_last_layer_steps=2, warmup_steps=0))
    initial = trainable_state(task)
    record = Record()
    # 7 fixture images: 3 batches of 2 per epoch.
    trainer(max_steps=3, callbacks=[record]).fit(task, datamodule=fmow())
    last = 'objective.head.last_layer.weight_v'
    # Steps 1 and 2: the prototypes stay; step 3: they move.
    assert torch.equal(record.states[0][last], initial[last])
    assert torch.equal(record.states[1][last], initial[last])
    assert not torch.equal(record.states[2][last], initial[last])
    # Everything else trains from the first step.
    lora = 'model.blocks.0.attn.qkv.lora_B'
    assert not torch.equal(record.states[0][lora], initial[lora])
    assert not torch.equal(
        record.states[0]['objective.head.layers.0.weight'],
        initial['objective.head.layers.0.weight'],
    )
    # The prototype layer is its own parameter group with a zero rate meanwhile.
    groups = task.trainer.optimizers[0].param_groups
    # (No patch-embedding group: it is frozen in this configuration.)
    assert [g.get('last_layer', False) for g in groups] == [False, True]
    assert groups[1]['params'] == [
        task.objective.head.last_layer.weight_g,
        task.objective.head.last_layer.weight_v,
    ]
    assert record.lrs[0][1] == 0.0 and record.lrs[0][0] > 0
    assert record.lrs[2][1] == record.lrs[2][0] > 0


def test_ema_per_optimizer_step_with_accumulation_and_lr_scaling() -> None:
    task = ExPLoRADINOv2(**task_kwargs(warmup_steps=0))
    initial = trainable_state(task)
    t = trainer(max_steps=1, accumulate_grad_batches=2)
    t.fit(task, datamodule=fmow(batch_size=2))
    assert t.global_step == 1
    # sqrt scaling with the effective batch 2 x 2 (lr at step 0 of the cosine).
    assert task.effective_lr() == pytest.approx(1e-3 * math.sqrt(4 / 1024))
    m = task.teacher_momentum(0)
    assert m == pytest.approx(0.994)
    student = trainable_state(task)
    ema = {
        **{
            f'model.{k}': v
            for k, v in task.objective.teacher_encoder.ema_tensors().items()
        },
        **{
            f'objective.head.{k}': v
            for k, v in task.objective.teacher_head.ema_tensors().items()
        },
    }
    assert set(ema) == set(student)
    moved = 0
    for name, value in ema.items():
        expected = initial[name] * m + student[name] * (1 - m)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)
        moved += not torch.equal(student[name], initial[name])
    assert moved > 0


def test_teacher_schedules() -> None:
    task = ExPLoRADINOv2(**task_kwargs(teacher_temp_warmup_steps=3))
    assert [task.objective.teacher_temperature(i) for i in range(4)] == pytest.approx(
        [0.04, 0.055, 0.07, 0.07]
    )
    t = trainer(max_steps=10)
    task.trainer = t
    assert task.teacher_momentum(5) == pytest.approx(cosine_schedule(5, 10, 0.994, 1.0))


def test_resume_continues_exactly(tmp_path: Path) -> None:
    kwargs = task_kwargs(freeze_last_layer_steps=1)
    lightning.seed_everything(0)
    straight = ExPLoRADINOv2(**kwargs)
    # Saved after the last batch of epoch 0 (Lightning resumes a checkpoint
    # written in on_train_epoch_end as if that epoch were unfinished).
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer(max_steps=4, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        straight, loader()
    )
    half = tmp_path / 'epoch=0-step=2.ckpt'
    assert half.exists()

    lightning.seed_everything(1)  # resuming must not depend on the global seed
    resumed = ExPLoRADINOv2(**kwargs)
    callback = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    t = trainer(max_steps=4, enable_checkpointing=True, callbacks=[callback])
    t.fit(resumed, loader(), ckpt_path=half)
    assert t.global_step == 4
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(k.startswith('objective.teacher_encoder.') for k in a)


def test_export_is_the_teacher(tmp_path: Path, source: Path) -> None:
    task = ExPLoRADINOv2(**task_kwargs(weights=str(source)))
    trainer(max_steps=2).fit(task, loader())
    paths = task.export(tmp_path, tag='dino')
    tensors, config, meta = load_delta(paths['delta'])
    ema = task.objective.teacher_encoder.ema_tensors()
    student = dict(task.encoder.named_parameters())
    assert (
        set(tensors) == set(ema) == {n for n, p in student.items() if p.requires_grad}
    )
    for name, value in tensors.items():
        torch.testing.assert_close(value, ema[name])
    assert any(not torch.equal(tensors[n], student[n].detach()) for n in tensors)
    assert config == task.encoder.explora_config and meta['global_step'] == 2

    x = torch.rand(2, 3, 56, 56)
    expected = task.embed(x)
    # W_S + Δ_T rebuilt from the delta file ...
    rebuilt = create_model(
        'explora_vitb_dino',
        weights=source,
        num_classes=0,
        img_size=56,
        dynamic_img_size=True,
        **TINY_VIT,
    )
    rebuilt = apply_delta(rebuilt, paths['delta']).eval()
    assert isinstance(rebuilt, VisionTransformer)
    normalize = task.objective.multicrop.normalize
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.forward_features(normalize(x))[:, 0], expected, rtol=1e-4, atol=1e-5
        )
    # ... and the merged checkpoint, loaded by path like TorchGeo does.
    merged = create_model(
        'explora_vitb_dino',
        weights=paths['encoder'],
        num_classes=0,
        img_size=56,
        **TINY_VIT,
    ).eval()
    assert isinstance(merged, VisionTransformer)
    with torch.no_grad():
        torch.testing.assert_close(
            merged.forward_features(normalize(x))[:, 0], expected, rtol=1e-4, atol=1e-5
        )
    # The student is a different network: the export is not the student.
    with torch.no_grad():
        assert not torch.allclose(
            vit_tokens(task.vit.eval(), normalize(x))[:, 0], expected, atol=1e-4
        )


def test_gradient_clipping_per_network() -> None:
    task = ExPLoRADINOv2(**task_kwargs(clip_grad=3.0))
    task.trainer = trainer()
    for p in task.encoder.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    small = {}
    for n, p in task.objective.head.named_parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 1e-4)
            small[n] = p.grad.clone()
    task.configure_gradient_clipping(torch.optim.SGD(task.parameters(), lr=0.1))
    norm = torch.linalg.vector_norm(
        torch.stack(
            [
                torch.linalg.vector_norm(p.grad)
                for p in task.encoder.parameters()
                if p.grad is not None
            ]
        )
    )
    assert float(norm) == pytest.approx(3.0, rel=1e-4)
    for n, p in task.objective.head.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.grad, small[n])


def reference_knn(
    bank: Tensor, bank_labels: Tensor, query: Tensor, k: int, t: float, classes: int
) -> Tensor:
    bank = nn.functional.normalize(bank, dim=1)
    query = nn.functional.normalize(query, dim=1)
    predictions = []
    for q in query:
        sims = bank @ q
        top = sims.topk(k)
        scores = torch.zeros(classes)
        for s, i in zip(top.values, top.indices, strict=True):
            scores[bank_labels[i]] += torch.exp(s / t)
        predictions.append(int(scores.argmax()))
    return torch.tensor(predictions)


def test_knn_probe_logs_reference_accuracy(source: Path) -> None:
    # Source weights: a random LayerScale-1e-5 ViT maps every image to almost
    # the same class token.
    task = ExPLoRADINOv2(**task_kwargs(weights=str(source)))
    train_loader, val_loader = loader(n=6, seed=1), loader(n=4, seed=2)
    probe = KNNProbe(train_loader, val_loader, num_classes=2, k=3, every_n_steps=1)
    t = trainer(max_steps=1, callbacks=[probe])
    t.fit(task, loader())
    logged = float(t.callback_metrics['knn_top1'])
    bank = torch.cat([task.embed(b['image']) for b in train_loader])
    bank_labels = torch.cat([b['label'] for b in train_loader])
    query = torch.cat([task.embed(b['image']) for b in val_loader])
    labels = torch.cat([b['label'] for b in val_loader])
    predicted = reference_knn(bank, bank_labels, query, 3, 0.07, 2)
    assert logged == pytest.approx(float((predicted == labels).float().mean()))
    assert logged == 1.0  # the classes differ in brightness
    with pytest.raises(ValueError, match='must be >= 1'):
        KNNProbe(train_loader, val_loader, num_classes=0)
    with pytest.raises(TypeError, match='has no embed'):
        probe.accuracy(lightning.LightningModule())


def test_configuration_errors() -> None:
    with pytest.raises(
        ValueError, match='global crop size 50 is not a multiple of the patch size 14'
    ):
        ExPLoRADINOv2(**task_kwargs(global_crop_size=50))
    with pytest.raises(
        ValueError, match='patch grid 2x2 is too small for block masking'
    ):
        ExPLoRADINOv2(**task_kwargs(img_size=28))
    # Without iBOT the small grid is fine.
    task = ExPLoRADINOv2(**task_kwargs(img_size=28, ibot_loss_weight=0.0))
    assert task.objective.masking is None


def test_normalised_datamodule_is_refused() -> None:
    # A labelled-mode datamodule standardises with fMoW statistics; the task
    # takes [0, 1] images and says so before the first step.
    task = ExPLoRADINOv2(**task_kwargs())
    labelled = FMoWDataModule(root=FMOW, batch_size=2, image_size=64, crop_pct=1.0)
    with pytest.raises(
        ValueError,
        match=r"FMoWDataModule hands ExPLoRADINOv2 images normalised 'standard' "
        r'.*takes values in \[0, 1\]',
    ):
        trainer(max_steps=1).fit(task, datamodule=labelled)


def test_bad_inputs_are_reported() -> None:
    task = ExPLoRADINOv2(**task_kwargs())
    with pytest.raises(ValueError, match=r'scaled to \[0, 1\]'):
        task.training_step({'image': torch.rand(2, 3, 64, 64) * 255}, 0)
    bad = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        task.objective.head.layers[0].weight.fill_(float('nan'))
    with pytest.raises(NonFiniteLossError, match='non-finite training loss'):
        task.training_step({'image': bad}, 0)
