"""The recipes count what the paper counts (DinoV2 iterations are micro-batches)."""

from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).parents[1] / 'recipes'

#: The paper's DinoV2 schedule, in iterations of DinoV2's loop (micro-batches).
PAPER = {'max': 200_000, 'warmup': 10_000, 'freeze': 3_000, 'teacher_temp': 30_000}
DINOV2 = sorted(
    p.name for p in RECIPES.glob('*.yaml') if 'ExPLoRADINOv2' in p.read_text()
)


@pytest.mark.parametrize('name', DINOV2)
def test_dinov2_schedules_in_micro_batches(name: str) -> None:
    config = yaml.safe_load((RECIPES / name).read_text())
    trainer, model = config['trainer'], config['model']['init_args']
    data = config['data']['init_args']
    accumulate = trainer['accumulate_grad_batches']
    # One paper iteration = one micro-batch of 32; an optimiser step = 32 of them.
    assert data['batch_size'] == 32 and accumulate == 32
    assert trainer['max_steps'] * accumulate == PAPER['max']
    for group, key, paper in (
        ('optimization', 'warmup_steps', PAPER['warmup']),
        ('objective', 'freeze_last_layer_steps', PAPER['freeze']),
        ('objective', 'teacher_temp_warmup_steps', PAPER['teacher_temp']),
    ):
        value = model[group][key]
        assert abs(value * accumulate - paper) <= accumulate // 2, key


def test_headline_export_is_the_150k_teacher() -> None:
    config = yaml.safe_load((RECIPES / 'fmow_rgb_explora_dinov2.yaml').read_text())
    (export,) = [
        c for c in config['trainer']['callbacks'] if c['class_path'].endswith('Export')
    ]
    every = export['init_args']['every_n_steps']
    # The fourth export is the teacher after 150k iterations (to 32 of them).
    assert abs(4 * every * 32 - 150_000) <= 32


@pytest.mark.parametrize(
    'name',
    [
        'fmow_rgb_lora_finetune.yaml',
        'fmow_sentinel_finetune.yaml',
        'eurosat_finetune.yaml',
        'fmow_temporal_finetune.yaml',
        'wilds_iwildcam_lora_finetune.yaml',
        'wilds_camelyon17_lora_finetune.yaml',
        'fmow_rgb_mae_lora_finetune.yaml',
    ],
)
def test_lora_finetune_recipes_follow_the_paper(name: str) -> None:
    config = yaml.safe_load((RECIPES / name).read_text())
    trainer, model = config['trainer'], config['model']['init_args']
    batch = config['data']['init_args']['batch_size']
    assert trainer['max_epochs'] == 120
    assert batch * trainer['accumulate_grad_batches'] == 256
    protocol = model['protocol']
    assert (model['finetune'], model['lora']['rank']) == ('lora', 8)
    assert (protocol['scheduler'], protocol['warmup_epochs']) == ('cosine', 1)
    assert protocol['drop_path_rate'] == 0.2
