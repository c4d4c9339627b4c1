from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from explora_geo.tasks.explora_mae import ExPLoRAMAE
from tests.tasks.tiny_mae import (
    Reseed,
    loader,
    single_thread,  # noqa: F401  (autouse fixture)
    task_kwargs,
    trainer,
)

STEPS = 4

# Lightning cannot fast-forward a plain DataLoader on a mid-epoch resume (it
# restarts the iterator), so every batch holds the same four images; masks and
# augmentation are seeded by the step (Reseed).


def data() -> Any:
    return loader(batch_size=4, n=4, repeat=STEPS)


class Kill(lightning.Callback):
    """Crash the run when a given optimiser step is about to start."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError('simulated crash')


def make_task() -> ExPLoRAMAE:
    torch.manual_seed(0)
    # Warm-up and cosine make the learning rate differ at every step.
    return ExPLoRAMAE(**task_kwargs(lr=1e-2, lr_scaling='none', warmup_steps=2))


def lr_of(t: lightning.Trainer) -> float:
    return float(t.optimizers[0].param_groups[0]['lr'])


def test_resume_equals_straight_run(tmp_path: Path) -> None:
    straight = make_task()
    t1 = trainer(tmp_path / 'a', max_steps=STEPS, callbacks=[Reseed()])
    t1.fit(straight, data())

    crashed = make_task()
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / 'ckpt', save_top_k=-1, every_n_train_steps=STEPS // 2
    )
    t2 = trainer(
        tmp_path / 'b',
        max_steps=STEPS,
        enable_checkpointing=True,
        callbacks=[Reseed(), checkpoints, Kill(at=STEPS // 2)],
    )
    with pytest.raises(RuntimeError, match='simulated crash'):
        t2.fit(crashed, data())
    ckpt = tmp_path / 'ckpt' / f'epoch=0-step={STEPS // 2}.ckpt'
    assert ckpt.is_file()

    resumed = make_task()
    t3 = trainer(tmp_path / 'c', max_steps=STEPS, callbacks=[Reseed()])
    t3.fit(resumed, data(), ckpt_path=ckpt)

    assert t3.global_step == t1.global_step == STEPS
    assert lr_of(t3) == pytest.approx(lr_of(t1))
    expected = straight.state_dict()
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)
    # The run really trained between the checkpoint and the end.
    saved = torch.load(ckpt, weights_only=True)['state_dict']
    name = 'model.encoder.blocks.1.mlp.fc1.weight'
    assert not torch.allclose(saved[name], expected[name])
    # Optimiser moments match too.
    s1, s3 = t1.optimizers[0].state_dict(), t3.optimizers[0].state_dict()
    for key, state in s1['state'].items():
        torch.testing.assert_close(s3['state'][key]['exp_avg_sq'], state['exp_avg_sq'])
