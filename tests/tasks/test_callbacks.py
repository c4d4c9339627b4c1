from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import pytest
import torch

from explora_geo.tasks.callbacks import ExPLoRAExport
from explora_geo.tasks.explora_mae import ExPLoRAMAE
from tests.tasks.tiny_mae import (
    loader,
    single_thread,  # noqa: F401  (autouse fixture)
    task_kwargs,
    trainer,
)


class CountingMAE(ExPLoRAMAE):
    """Records the global step of every export."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export_steps: list[tuple[int, str]] = []

    def export(self, dirpath: Any, tag: str = 'last') -> dict[str, Path]:
        self.export_steps.append((self.global_step, tag))
        return super().export(dirpath, tag)


def test_exports_on_schedule_and_at_the_end(tmp_path: Path) -> None:
    task = CountingMAE(**task_kwargs(lr=1e-2, lr_scaling='none'))
    callback = ExPLoRAExport(tmp_path / 'exports', every_n_steps=2)
    trainer(tmp_path, max_steps=5, callbacks=[callback]).fit(task, loader())
    assert task.export_steps == [
        (2, 'step00000002'),
        (4, 'step00000004'),
        (5, 'last'),
    ]
    assert sorted(p.name for p in (tmp_path / 'exports').iterdir()) == [
        'last_delta.safetensors',
        'last_encoder.ckpt',
        'step00000002_delta.safetensors',
        'step00000002_encoder.ckpt',
        'step00000004_delta.safetensors',
        'step00000004_encoder.ckpt',
    ]
    assert (
        callback.exported['last']['encoder']
        == tmp_path / 'exports' / 'last_encoder.ckpt'
    )
    early = torch.load(callback.exported['step00000002']['encoder'], weights_only=True)
    last = torch.load(callback.exported['last']['encoder'], weights_only=True)
    assert early['hyper_parameters']['global_step'] == 2
    assert last['hyper_parameters']['global_step'] == 5
    name = 'model.blocks.1.mlp.fc1.weight'
    assert not torch.equal(early['state_dict'][name], last['state_dict'][name])


def test_gradient_accumulation_exports_once_per_step(tmp_path: Path) -> None:
    task = CountingMAE(**task_kwargs())
    callback = ExPLoRAExport(every_n_steps=1, export_on_train_end=False)
    t = trainer(tmp_path, max_steps=2, accumulate_grad_batches=2, callbacks=[callback])
    t.fit(task, loader(batch_size=2))
    assert task.export_steps == [(1, 'step00000001'), (2, 'step00000002')]
    # Default folder: under the trainer's root.
    assert (tmp_path / 'exports' / 'step00000001_encoder.ckpt').is_file()


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    task = CountingMAE(**task_kwargs())
    callback = ExPLoRAExport(tmp_path, every_n_steps=1)
    other_rank = SimpleNamespace(global_step=3, is_global_zero=False)
    callback.on_train_batch_end(other_rank, task, None, None, 0)  # type: ignore[arg-type]
    callback.on_train_end(other_rank, task)  # type: ignore[arg-type]
    assert task.export_steps == []
    assert list(tmp_path.iterdir()) == []


def test_needs_an_explora_task(tmp_path: Path) -> None:
    callback = ExPLoRAExport(tmp_path)
    with pytest.raises(
        TypeError, match='needs an ExPLoRAPretrainingTask, got LightningModule'
    ):
        callback.setup(trainer(tmp_path), lightning.LightningModule(), 'fit')


def test_negative_schedule() -> None:
    with pytest.raises(ValueError, match='every_n_steps must be >= 0, got -1'):
        ExPLoRAExport(every_n_steps=-1)
