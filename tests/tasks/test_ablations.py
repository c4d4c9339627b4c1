"""The paper's pre-training ablations are reachable from the task arguments (YAML)."""

from typing import Any

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from explora_geo.adapter import (
    ExPLoRAConfig,
    LinearLoRA,
    QKVLoRA,
    count_trainable_parameters,
)
from explora_geo.tasks import ExPLoRADINOv2
from tests.tasks.test_explora_dinov2 import Images, task_kwargs

ALL = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']


def test_all_matrices_frozen_norms_count_vitl() -> None:
    with torch.device('meta'):
        adapter = ExPLoRAConfig(
            unfrozen_blocks=(-1,), rank=64, targets=tuple(ALL), train_norms=False
        )
        task = ExPLoRADINOv2(adapter=adapter)
    d, depth, r = 1024, 24, 64
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (8 * d * d + 5 * d)
    # LoRA on q, k, v, proj (D x D each), fc1 (D -> 4D) and fc2 (4D -> D).
    lora = 4 * 2 * r * d + 2 * (r * d + r * 4 * d)
    # Frozen norms outside the unfrozen block; the class token trains.
    assert count_trainable_parameters(task.encoder) == block + (depth - 1) * lora + d


def test_all_matrices_pretraining_fits() -> None:
    task = ExPLoRADINOv2(**task_kwargs(targets=ALL, train_norms=False))
    qkv = task.encoder.get_submodule('blocks.0.attn.qkv')
    fc1 = task.encoder.get_submodule('blocks.0.mlp.fc1')
    fc2 = task.encoder.get_submodule('blocks.0.mlp.fc2')
    assert isinstance(qkv, QKVLoRA) and isinstance(fc2, LinearLoRA)
    assert not task.encoder.get_parameter('blocks.0.norm1.weight').requires_grad
    assert isinstance(fc1, LinearLoRA)
    before = fc1.lora_B.detach().clone()
    trainer = Trainer(
        max_steps=2,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data: Any = Images()
    trainer.fit(task, DataLoader(data, batch_size=2))
    assert not torch.equal(fc1.lora_B.detach(), before)
    assert torch.isfinite(trainer.callback_metrics['train_loss'])
