"""Distributed behaviour of the DinoV2 objective on 2 CPU processes (gloo)."""

import os
import socket
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from explora_geo.ssl.dinov2 import vit_tokens
from explora_geo.ssl.dinov2_losses import sinkhorn_knopp
from explora_geo.ssl.teacher import EMATeacher
from explora_geo.tasks.explora_dinov2 import ExPLoRADINOv2
from tests.data.checkpoints import layouts
from tests.tasks.test_explora_dinov2 import loader, task_kwargs

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def init(rank: int, port: int) -> None:
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(port)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)


def spawn(fn: Any, *args: Any) -> None:
    mp.spawn(fn, args=(free_port(), *args), nprocs=WORLD, join=True)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / 'dinov2_tiny.pth'
    torch.save({k: v * 0.1 for k, v in layouts.dinov2(d=64, depth=2).items()}, path)
    return path


def _worker(rank: int, port: int, source: str) -> None:
    # Single-process references first, on the whole batch of 2 b images.
    torch.manual_seed(0)
    b = 3
    logits = torch.rand(2 * WORLD * b, 32) * 2 - 1
    full = sinkhorn_knopp(logits, 0.04)
    patches = torch.rand(10, 32) * 2 - 1
    counts = [3, 7]  # uneven masked-token counts, as iBOT has
    full_patches = sinkhorn_knopp(patches, 0.04)

    task = ExPLoRADINOv2(**task_kwargs(weights=source))
    crops = torch.randn(2 * WORLD * b, 3, 56, 56)  # crop 0 of all images, then crop 1
    masks = torch.rand(2 * WORLD * b, 16) < 0.3
    full_global, full_patch = task.objective.teacher_targets(crops, masks, 0.04)
    rows = slice(rank * 2 * b, (rank + 1) * 2 * b)
    local_only = sinkhorn_knopp(logits[rows], 0.04)

    init(rank, port)
    # Sinkhorn-Knopp on this rank's rows equals the rows of the global result ...
    torch.testing.assert_close(sinkhorn_knopp(logits[rows], 0.04), full[rows])
    # ... which the rank alone would not compute.
    assert not torch.allclose(full[rows], local_only, atol=1e-4)
    start = sum(counts[:rank])
    mine = slice(start, start + counts[rank])
    torch.testing.assert_close(sinkhorn_knopp(patches[mine], 0.04), full_patches[mine])
    # A rank without any masked token still takes part.
    alone = sinkhorn_knopp(patches[:0] if rank else patches, 0.04)
    if rank == 0:
        torch.testing.assert_close(alone, full_patches)
    else:
        assert alone.shape == (0, 32)

    # The task: 2 ranks x b images give the targets of 1 rank x 2 b images.
    images = torch.arange(rank * b, (rank + 1) * b)
    local = torch.cat((images, WORLD * b + images))
    got_global, got_patch = task.objective.teacher_targets(
        crops[local], masks[local], 0.04
    )
    torch.testing.assert_close(got_global, full_global[local])
    owner = masks.nonzero()[:, 0]
    assert full_patch is not None and got_patch is not None
    torch.testing.assert_close(got_patch, full_patch[torch.isin(owner, local)])

    _fsdp_checks(source)
    dist.destroy_process_group()


class _Step(nn.Module):
    """What a training step does under a root FSDP unit: teacher and student passes."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        assert isinstance(encoder, VisionTransformer)
        self.encoder = encoder
        self.teacher = EMATeacher(encoder)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.teacher.run(vit_tokens, x), vit_tokens(self.encoder, x)


def _fsdp_checks(source: str) -> None:
    torch.manual_seed(0)
    task = ExPLoRADINOv2(**task_kwargs(weights=source))
    step = _Step(task.encoder)
    initial = {k: v.clone() for k, v in step.teacher.ema_tensors().items()}
    wrapped = FSDP(step, use_orig_params=True, device_id=torch.device('cpu'))
    x = torch.rand(2, 3, 56, 56)
    teacher_out, student_out = wrapped(x)
    torch.testing.assert_close(teacher_out, student_out.detach())
    optimizer = torch.optim.SGD(
        [p for p in wrapped.parameters() if p.requires_grad], lr=1.0
    )
    student_out.square().sum().backward()
    optimizer.step()
    with FSDP.summon_full_params(wrapped, writeback=False):
        step.teacher.update(0.5)
        student = {n: p.detach().clone() for n, p in task.encoder.named_parameters()}
    for name, value in step.teacher.ema_tensors().items():
        torch.testing.assert_close(value, 0.5 * initial[name] + 0.5 * student[name])
    teacher_out, student_out = wrapped(x)
    # The swapped tensors are used inside FSDP's forward ...
    assert not torch.allclose(teacher_out, student_out.detach(), atol=1e-4)
    # ... and equal a plain copy holding the EMA values.
    with FSDP.summon_full_params(wrapped, writeback=False):
        plain = step.teacher.materialize().eval()
    assert isinstance(plain, VisionTransformer)
    with torch.no_grad():
        torch.testing.assert_close(
            teacher_out, vit_tokens(plain, x), rtol=1e-5, atol=1e-6
        )

    # Nested FSDP units inside the encoder are rejected.
    nested = ExPLoRADINOv2(**task_kwargs())
    blocks = nested.encoder.get_submodule('blocks')
    assert isinstance(blocks, nn.Sequential)
    blocks[0] = FSDP(blocks[0], use_orig_params=True, device_id=torch.device('cpu'))
    with pytest.raises(RuntimeError, match=r'nested FSDP units at \[.blocks.0.\]'):
        nested.on_fit_start()


def test_global_batch_centering_and_fsdp_teacher(source: Path) -> None:
    # One pair of processes for both checks: starting them dominates the time.
    spawn(_worker, str(source))


class _CheckRanksAgree(lightning.Callback):
    def on_train_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        assert dist.is_initialized() and dist.get_world_size() == WORLD
        state = {
            k: v.detach().double().sum().item()
            for k, v in pl_module.state_dict().items()
        }
        gathered: list[Any] = [None] * WORLD
        dist.all_gather_object(gathered, state)
        assert gathered[0] == gathered[1]
        assert any(k.startswith('objective.teacher_encoder.') for k in state)
        # lr scaled by the global batch: 2 ranks x 2 images.
        lr = trainer.optimizers[0].param_groups[0]['initial_lr']
        assert lr == pytest.approx(1e-3 * (4 / 1024) ** 0.5)


def test_ddp_spawn_fit(source: Path) -> None:
    task = ExPLoRADINOv2(**task_kwargs(weights=str(source)))
    before = {
        k: v.clone() for k, v in task.objective.teacher_encoder.ema_tensors().items()
    }
    trainer = lightning.Trainer(
        accelerator='cpu',
        devices=WORLD,
        strategy='ddp_spawn',
        max_steps=2,
        precision='bf16-mixed',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_CheckRanksAgree()],
    )
    trainer.fit(task, loader(n=8, batch_size=2))
    assert torch.isfinite(trainer.callback_metrics['train_loss'])
    # The trained weights (rank 0's) come back, EMA included.
    after = task.objective.teacher_encoder.ema_tensors()
    assert any(not torch.equal(before[k], after[k]) for k in before)
