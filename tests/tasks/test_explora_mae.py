import fnmatch
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightly.models.utils import normalize_mean_var, patchify
from torch import nn
from torch.utils.data import DataLoader
from torchgeo.tasks import Classification

from explora_geo import apply_delta, create_model
from explora_geo.adapter import ExPLoRAConfig, apply_explora, count_trainable_parameters
from explora_geo.datamodules import FMoWDataModule, FMoWTemporalDataModule
from explora_geo.models.mae import create_mae, random_masking
from explora_geo.sensors import IMAGENET_RGB
from explora_geo.tasks.explora_mae import ExPLoRAMAE, freeze_decoder
from explora_geo.tasks.pretraining import NonFiniteLossError
from tests.data.checkpoints import layouts
from tests.tasks.tiny_mae import (
    IMG,
    TINY,
    TINY_TEMPORAL,
    Reseed,
    loader,
    single_thread,  # noqa: F401  (autouse fixture)
    task_kwargs,
    trainer,
)

FMOW = Path(__file__).parents[1] / 'data' / 'fmow'


class CaptureBatch(lightning.Callback):
    """Keep the last training batch as the task received it."""

    batch: dict[str, torch.Tensor]

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batch = batch


def fmow(batch_size: int = 4, temporal: bool = False, **kwargs: Any) -> Any:
    """fMoW-RGB fixture images as pre-training hands them: 32 px, [0, 1]."""
    cls = FMoWTemporalDataModule if temporal else FMoWDataModule
    return cls(
        root=FMOW,
        batch_size=batch_size,
        image_size=IMG,
        crop_pct=1.0,
        unlabeled=True,
        **kwargs,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A source MAE checkpoint (encoder + decoder) for the tiny model."""
    torch.manual_seed(0)
    checkpoint = layouts.mae(d=32, depth=2, grid=4, patch=8, dec_d=16, dec_depth=2)
    # Keep activations tame: the layout helper draws N(0, 1) everywhere.
    checkpoint['model'] = {k: v * 0.1 for k, v in checkpoint['model'].items()}
    path = tmp_path / 'source_mae.pth'
    torch.save(checkpoint, path)
    return path


def test_source_weights_are_loaded(source: Path) -> None:
    task = ExPLoRAMAE(**task_kwargs(weights=str(source)))
    checkpoint = torch.load(source, weights_only=True)['model']
    state = task.model.state_dict()
    for key, value in checkpoint.items():
        name = key if key.startswith(('decoder_', 'mask_token')) else f'encoder.{key}'
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=key)


def trainable(task: nn.Module) -> set[str]:
    return {n for n, p in task.named_parameters() if p.requires_grad}


class TestTrainableTensors:
    def test_exact_set(self) -> None:
        task = ExPLoRAMAE(**task_kwargs())
        names = {n for n, _ in task.named_parameters()}
        patterns = [
            'model.encoder.blocks.0.attn.qkv.lora_[AB]',  # LoRA on the frozen block
            'model.encoder.blocks.1.*',  # the unfrozen block (-1)
            'model.encoder.blocks.0.norm[12].*',
            'model.encoder.norm.*',
            'model.encoder.cls_token',
            'model.decoder_blocks.[01].attn.qkv.lora_[AB]',
            'model.decoder_blocks.[01].norm[12].*',
            'model.decoder_norm.*',
        ]
        expected = {
            n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)
        }
        assert trainable(task) == expected
        assert len(expected) == 35
        frozen = names - expected
        for name in (
            'model.mask_token',
            'model.decoder_pos_embed',
            'model.decoder_embed.weight',
            'model.decoder_pred.weight',
            'model.decoder_blocks.0.attn.qkv.weight',
            'model.decoder_blocks.1.mlp.fc1.weight',
            'model.encoder.pos_embed',
            'model.encoder.patch_embed.proj.weight',
            'model.encoder.blocks.0.attn.qkv.weight',
        ):
            assert name in frozen

    def test_decoder_lora_disabled(self) -> None:
        task = ExPLoRAMAE(**task_kwargs(decoder_lora_rank=0))
        assert not any(
            'decoder_blocks' in n and 'lora' in n for n, _ in task.named_parameters()
        )
        assert 'model.decoder_norm.weight' in trainable(task)

    def test_model_patterns_are_trained(self) -> None:
        mae = create_mae(
            TINY, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2
        )
        mae.decoder_trainable_patterns = lambda: ('decoder_pred.*',)  # type: ignore[method-assign]
        freeze_decoder(mae, rank=0)
        decoder = {
            n: p for n, p in mae.named_parameters() if not n.startswith('encoder.')
        }
        assert {n for n, p in decoder.items() if p.requires_grad} == {
            'decoder_pred.weight',
            'decoder_pred.bias',
        }

    def test_vitl_m_1_l_r32_count(self) -> None:
        # M-[1,L]-r32 on the RGB ViT-L MAE with decoder LoRA r32: the paper's
        # multispectral 29.7M less the 3 group patch embeddings and group heads.
        with torch.device('meta'):
            mae = create_mae('explora_vitl_mae')
        apply_explora(mae.encoder, ExPLoRAConfig(unfrozen_blocks=(0, -1), rank=32))
        freeze_decoder(mae, rank=32)
        d, dd, depth, dec_depth = 1024, 512, 24, 8
        block = 12 * d * d + 13 * d
        expected = (
            2 * block
            + (depth - 2) * 2 * 2 * 32 * d  # LoRA on Q, V
            + (depth - 2) * 4 * d  # norms of the LoRA blocks
            + 2 * d  # final norm
            + d  # cls token
            + dec_depth * 2 * 2 * 32 * dd  # decoder LoRA on Q, V
            + (dec_depth * 4 + 2) * dd  # decoder norms
        )
        assert count_trainable_parameters(mae) == expected
        assert round(expected / 1e6, 2) == 28.71


class TestFit:
    def test_fit_logs_and_scales_lr(self, tmp_path: Path) -> None:
        task = ExPLoRAMAE(**task_kwargs())
        t = trainer(tmp_path, max_steps=2)
        t.fit(task, datamodule=fmow(batch_size=4))
        assert t.global_step == 2
        assert torch.isfinite(t.logged_metrics['train_loss_step'])
        assert t.logged_metrics[
            'trainable_params'
        ].item() == count_trainable_parameters(task)
        scheduler = t.lr_scheduler_configs[0].scheduler
        assert scheduler.base_lrs == [pytest.approx(4.5e-4 * 4 / 256)]
        assert t.optimizers[0].param_groups[0]['betas'] == (0.9, 0.95)

    def test_bf16_mixed(self, tmp_path: Path) -> None:
        task = ExPLoRAMAE(**task_kwargs())
        before = task.model.encoder.blocks[1].mlp.fc1.weight.detach().clone()
        t = trainer(tmp_path, fast_dev_run=True, precision='bf16-mixed')
        t.fit(task, datamodule=fmow())
        assert torch.isfinite(t.logged_metrics['train_loss_step'])
        after = task.model.encoder.blocks[1].mlp.fc1.weight
        assert after.dtype == torch.float32
        assert not torch.equal(before, after)

    def test_overfits_a_fixed_batch(self, tmp_path: Path) -> None:
        # Same images and same mask every step. The frozen decoder_pred only
        # reaches a 16-dim subspace of the 192-dim patches, so the loss cannot
        # go below the least-squares floor of that layer: training must cover
        # at least half of the way to it.
        torch.manual_seed(0)
        lr = 3e-2
        task = ExPLoRAMAE(
            **task_kwargs(lr=lr, min_lr=lr, lr_scaling='none', transform=nn.Identity())
        )
        # Four fixture images in [0, 1]; the model sees them normalised.
        dm = fmow()
        dm.setup('fit')
        raw = torch.stack([dm.train_dataset[i]['image'] for i in range(4)]) / 255
        images = task.objective.normalize(raw)
        torch.manual_seed(7)
        mask = random_masking(4, 16, 0.75).mask
        target = normalize_mean_var(patchify(images, 8))
        weight = task.model.get_parameter('decoder_pred.weight').detach()
        bias = task.model.get_parameter('decoder_pred.bias').detach()
        best = torch.linalg.lstsq(
            weight.expand(4, -1, -1), (target - bias).transpose(1, 2)
        ).solution
        residual = ((weight @ best).transpose(1, 2) + bias - target).pow(2).mean(-1)
        floor = float((residual * mask).sum() / mask.sum())

        def fixed_loss() -> float:
            torch.manual_seed(7)  # the mask above
            with torch.no_grad():
                return float(task.model(images).loss)

        start = fixed_loss()
        t = trainer(tmp_path, max_steps=20, callbacks=[Reseed(offset=7, fixed=True)])
        fixed = [{'image': image} for image in raw] * 20
        # A list is a map-style dataset; torch's stubs only accept Dataset.
        t.fit(task, DataLoader(fixed, batch_size=4, shuffle=False))  # type: ignore[arg-type]
        end = fixed_loss()
        assert floor < end < start - 0.5 * (start - floor)

    def test_nan_input_stops_with_the_step(self, tmp_path: Path) -> None:
        task = ExPLoRAMAE(**task_kwargs())
        with pytest.raises(
            NonFiniteLossError, match=r'non-finite training loss nan at global step 0'
        ):
            trainer(tmp_path, max_steps=2).fit(task, loader(nan=True))

    def test_extra_inputs_reach_the_model(self, tmp_path: Path) -> None:
        task = ExPLoRAMAE(**task_kwargs(model=TINY_TEMPORAL, decoder_kwargs=None))
        dm = fmow(batch_size=2, temporal=True)
        capture = CaptureBatch()
        t = trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[capture])
        t.fit(task, datamodule=dm)
        seen = task.model.last_timestamps
        assert isinstance(seen, torch.Tensor) and seen.shape == (2, 3, 3)
        assert torch.equal(seen, capture.batch['timestamps'])

    def test_augment_keeps_time_steps_aligned(self) -> None:
        task = ExPLoRAMAE(**task_kwargs())
        frames = torch.rand(2, 1, 3, IMG, IMG).repeat(1, 3, 1, 1, 1)
        out = task.objective.augment(frames)
        assert out.shape == frames.shape
        assert torch.equal(out[:, 0], out[:, 2])


def test_normalised_datamodule_is_refused(tmp_path: Path) -> None:
    task = ExPLoRAMAE(**task_kwargs())
    labelled = FMoWDataModule(root=FMOW, batch_size=4, image_size=IMG, crop_pct=1.0)
    with pytest.raises(
        ValueError,
        match=r"FMoWDataModule hands ExPLoRAMAE images normalised 'standard' "
        r'.*takes values in \[0, 1\]',
    ):
        trainer(tmp_path, max_steps=1).fit(task, datamodule=labelled)
    with pytest.raises(ValueError, match=r'the MAE objective expects images scaled to'):
        task.training_step({'image': torch.full((2, 3, IMG, IMG), 255.0)}, 0)


def test_rgb_is_normalised_after_augmentation() -> None:
    # MAE's reference pipeline: crop and flip [0, 1] images, then standardise
    # RGB with ImageNet statistics; other band sets stay as they come.
    task = ExPLoRAMAE(**task_kwargs())
    x = torch.linspace(0, 1, 3 * 4).view(1, 3, 2, 2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_RGB.unit_stats())
    torch.testing.assert_close(task.objective.normalize(x), (x - mean) / std)
    bands = torch.rand(1, 10, 2, 2)
    assert task.objective.normalize(bands) is bands


def test_export_loads_everywhere(tmp_path: Path, source: Path) -> None:
    task = ExPLoRAMAE(**task_kwargs(weights=str(source), lr=1e-2, lr_scaling='none'))
    trainer(tmp_path, max_steps=3).fit(task, loader())
    files = task.export(tmp_path / 'out', 'last')
    assert files['encoder'].name == 'last_encoder.ckpt'
    assert files['delta'].name == 'last_delta.safetensors'

    x = torch.rand(2, 3, IMG, IMG)
    adapted = task.encoder.eval()
    with torch.no_grad():
        reference = adapted(x)

    merged = create_model(TINY, weights=files['encoder'], num_classes=0).eval()
    with torch.no_grad():
        assert (merged(x) - reference).abs().max() <= 1e-5

    classifier = Classification(
        model=TINY, weights=str(files['encoder']), num_classes=5, in_channels=3
    )
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(classifier.model.state_dict()[name], value, msg=name)

    rebuilt = apply_delta(
        create_model(TINY, weights=source, num_classes=0), files['delta']
    )
    with torch.no_grad():
        assert (rebuilt.eval()(x) - merged(x)).abs().max() <= 1e-5
    # Training moved the encoder away from the source.
    original = create_model(TINY, weights=source, num_classes=0).eval()
    with torch.no_grad():
        assert (original(x) - merged(x)).abs().max() > 1e-3
