"""Every recipe fits through ``torchgeo fit`` on the fixtures, and exports chain.

Each recipe runs as written except for sizes: a 2-block 64-wide backbone, no
source weights, batch 2, small images, 2 optimiser steps without gradient
accumulation (plus one validation batch where the recipe validates), on the CPU
in the precision the recipe's plugin picks there, and the data root pointing at
the recipe's fixture. Pre-training recipes must leave their merged encoder and
Δ_T export; each export then feeds the downstream recipe that consumes it
(``--model.init_args.weights``).
"""

import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from torchgeo import main as torchgeo_main

REPO = Path(__file__).parents[1]
RECIPES = sorted((REPO / 'recipes').glob('*.yaml'))
DATA = Path(__file__).parent / 'data'

VIT = '{depth: 2, embed_dim: 64, num_heads: 2}'
SATMAE = '{depth: 2, embed_dim: 64, num_heads: 2, channel_embed_dim: 32}'
MAE_DECODER = (
    '{decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2, '
    'decoder_channel_embed_dim: 8}'
)
TEMPORAL_DECODER = (
    '{decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2, '
    'decoder_time_embed_dim: 8}'
)
DINOV2 = [
    f'--model.init_args.model_kwargs={VIT}',
    '--model.init_args.img_size=56',
    '--model.init_args.objective.global_crop_size=56',
    '--model.init_args.objective.local_crop_size=28',
    '--model.init_args.objective.head_hidden_dim=64',
    '--model.init_args.objective.head_bottleneck_dim=32',
    '--model.init_args.objective.num_prototypes=128',
]
VIT_28 = [f'--model.init_args.model_kwargs={{img_size: 28, {VIT[1:-1]}}}']
#: Probe sweeps read the last 1 or 4 blocks; the test backbone has 2.
PROBE = ['--model.init_args.probe_blocks=[1, 2]']
#: ViT-g's SwiGLU needs an even hidden width: 96 x 8/3 = 256.
DINOV2_VITG = [
    *(o.replace('embed_dim: 64', 'embed_dim: 96') for o in DINOV2),
    '--model.init_args.adapter.unfrozen_blocks=[-1]',
]


@dataclass(frozen=True)
class Fixture:
    """How a recipe runs on the fixtures.

    Attributes:
        root: Data folder under tests/data.
        overrides: Size overrides of the recipe (backbone, image size).
        validates: Whether the recipe has a validation loader.
        consumes: Pre-training recipe whose export the recipe fine-tunes.
    """

    root: str
    overrides: list[str] = field(default_factory=list)
    validates: bool = True
    consumes: str | None = None


FIXTURES: dict[str, Fixture] = {
    'fmow_rgb_boft_finetune': Fixture(
        'fmow',
        [*VIT_28, '--data.init_args.image_size=28'],
        consumes='fmow_rgb_explora_dinov2',
    ),
    'fmow_rgb_explora_dinov2_vitb': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_explora_dinov2_vitg': Fixture(
        'fmow', [*DINOV2_VITG, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_explora_mae': Fixture(
        'fmow',
        [
            f'--model.init_args.model_kwargs={VIT}',
            '--model.init_args.decoder_kwargs='
            '{decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}',
            '--model.init_args.img_size=32',
            '--data.init_args.image_size=32',
        ],
    ),
    'fmow_rgb_mae_lora_finetune': Fixture(
        'fmow',
        [
            f'--model.init_args.model_kwargs={{img_size: 32, {VIT[1:-1]}}}',
            '--data.init_args.image_size=32',
        ],
        consumes='fmow_rgb_explora_mae',
    ),
    'fmow_temporal_finetune': Fixture(
        'fmow',
        [
            '--model.init_args.model_kwargs='
            f'{{img_size: 32, time_embed_dim: 16, {VIT[1:-1]}}}',
            '--data.init_args.image_size=32',
        ],
        consumes='fmow_temporal_explora',
    ),
    'naip_explora_dinov2': Fixture(
        'naip_landcover', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'resisc45_linear_probe': Fixture(
        'resisc45',
        [
            '--model.init_args.model_kwargs={img_size: 28, dynamic_img_size: true, '
            f'dynamic_img_pad: true, {VIT[1:-1]}}}',
            *PROBE,
        ],
        consumes='fmow_rgb_explora_dinov2',
    ),
    'wilds_camelyon17_lora_finetune': Fixture(
        'camelyon17',
        [*VIT_28, '--data.init_args.image_size=28'],
        consumes='wilds_camelyon17_explora_dinov2',
    ),
    'wilds_iwildcam_lora_finetune': Fixture(
        'iwildcam',
        [*VIT_28, '--data.init_args.image_size=28'],
        consumes='wilds_iwildcam_explora_dinov2',
    ),
    'fmow_rgb_ablation_frozen_norms': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_lora_all_matrices': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_lora_qv_only': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_rank32': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_rank8': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_unfreeze_1_lm1_l_r64': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_unfreeze_first': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_ablation_unfreeze_last_no_lora': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'eurosat_finetune': Fixture(
        'eurosat',
        [
            f'--model.init_args.model_kwargs={{img_size: 16, {SATMAE[1:-1]}}}',
            '--data.init_args.image_size=16',
        ],
        consumes='fmow_sentinel_explora',
    ),
    'fmow_rgb_explora_dinov2': Fixture(
        'fmow', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'fmow_rgb_linear_probe': Fixture(
        'fmow',
        [*VIT_28, *PROBE, '--data.init_args.image_size=28'],
        consumes='fmow_rgb_explora_dinov2',
    ),
    'fmow_rgb_lora_finetune': Fixture(
        'fmow',
        [*VIT_28, '--data.init_args.image_size=28'],
        consumes='fmow_rgb_explora_dinov2',
    ),
    'fmow_sentinel_explora': Fixture(
        'fmow_sentinel',
        [
            '--model.init_args.model=explora_vitl_satmae_group',
            f'--model.init_args.model_kwargs={SATMAE}',
            f'--model.init_args.decoder_kwargs={MAE_DECODER}',
            '--model.init_args.img_size=16',
            '--data.init_args.image_size=16',
        ],
    ),
    'fmow_sentinel_finetune': Fixture(
        'fmow_sentinel',
        [
            f'--model.init_args.model_kwargs={{img_size: 16, {SATMAE[1:-1]}}}',
            '--data.init_args.image_size=16',
        ],
        consumes='fmow_sentinel_explora',
    ),
    'fmow_temporal_explora': Fixture(
        'fmow',
        [
            f'--model.init_args.model_kwargs={{time_embed_dim: 16, {VIT[1:-1]}}}',
            f'--model.init_args.decoder_kwargs={TEMPORAL_DECODER}',
            '--model.init_args.img_size=32',
            '--data.init_args.image_size=32',
        ],
    ),
    'naip_landcover_linear_probe': Fixture(
        'naip_landcover',
        [*VIT_28, *PROBE, '--data.init_args.image_size=28'],
        consumes='naip_explora_dinov2',
    ),
    'spacenet1_explora_dinov2': Fixture(
        'spacenet1', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'spacenet1_segmentation': Fixture(
        'spacenet1',
        [
            f'--model.init_args.model_kwargs={VIT}',
            '--model.init_args.decoder_channels=16',
        ],
        consumes='spacenet1_explora_dinov2',
    ),
    'wilds_camelyon17_explora_dinov2': Fixture(
        'camelyon17', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'wilds_camelyon17_linear_probe': Fixture(
        'camelyon17',
        [*VIT_28, *PROBE, '--data.init_args.image_size=28'],
        consumes='wilds_camelyon17_explora_dinov2',
    ),
    'wilds_globalwheat_detection': Fixture(
        'globalwheat',
        [
            f'--model.init_args.model_kwargs={VIT}',
            '--model.init_args.fpn_channels=32',
            '--data.init_args.image_size=112',
        ],
        consumes='wilds_globalwheat_explora_dinov2',
    ),
    'wilds_globalwheat_explora_dinov2': Fixture(
        'globalwheat', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'wilds_iwildcam_explora_dinov2': Fixture(
        'iwildcam', [*DINOV2, '--data.init_args.image_size=56'], validates=False
    ),
    'wilds_iwildcam_linear_probe': Fixture(
        'iwildcam',
        [*VIT_28, *PROBE, '--data.init_args.image_size=28'],
        consumes='wilds_iwildcam_explora_dinov2',
    ),
}

PRETRAINING = sorted({f.consumes for f in FIXTURES.values() if f.consumes})
CHAINS = sorted((f.consumes, name) for name, f in FIXTURES.items() if f.consumes)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[LightningCLI]]:
    """Record the LightningCLI that ``torchgeo fit`` builds."""
    built: list[LightningCLI] = []

    class RecordingCLI(LightningCLI):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torchgeo_main, 'LightningCLI', RecordingCLI)
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    yield built


def run(recipe: str, workdir: Path, built: list[LightningCLI], *extra: str) -> Any:
    """Fit *recipe* in *workdir* and return its trainer after the checks."""
    fixture = FIXTURES[recipe]
    args = [
        'fit',
        '--config',
        str(REPO / 'recipes' / f'{recipe}.yaml'),
        *fixture.overrides,
        f'--data.dict_kwargs.root={DATA / fixture.root}',
        '--data.init_args.batch_size=2',
        '--data.init_args.num_workers=0',
        '--trainer.max_steps=2',
        '--trainer.limit_train_batches=2',
        '--trainer.limit_val_batches=1',
        '--trainer.num_sanity_val_steps=0',
        '--trainer.accumulate_grad_batches=1',
        '--trainer.accelerator=cpu',
        '--trainer.devices=1',
        '--trainer.logger=false',
        '--trainer.enable_progress_bar=false',
        '--trainer.enable_model_summary=false',
        f'--trainer.default_root_dir={workdir}',
        *extra,
    ]
    torchgeo_main.main(args)
    trainer = built[-1].trainer
    assert trainer.global_step == 2
    val_batches = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed
    assert val_batches == (1 if fixture.validates else 0)
    return trainer


def test_every_recipe_has_a_fixture() -> None:
    names = {p.stem for p in RECIPES}
    assert names - set(FIXTURES) == set(), 'recipes without an entry in FIXTURES'
    assert set(FIXTURES) - names == set(), 'FIXTURES entries without a recipe'
    for fixture in FIXTURES.values():
        assert (DATA / fixture.root).is_dir()


@pytest.fixture(scope='module')
def exports() -> dict[str, Path]:
    """Merged-encoder exports of the pre-training recipes run in this module."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize('recipe', [p.stem for p in RECIPES])
def test_recipe_fits(
    recipe: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: list[LightningCLI],
    exports: dict[str, Path],
) -> None:
    monkeypatch.chdir(tmp_path)
    run(recipe, tmp_path, cli, '--model.init_args.weights=null')
    if recipe in PRETRAINING:
        (folder,) = (tmp_path / 'outputs').glob('*/exports')
        assert (folder / 'last_encoder.ckpt').is_file()
        assert (folder / 'last_delta.safetensors').is_file()
        exports[recipe] = folder / 'last_encoder.ckpt'


@pytest.mark.slow
@pytest.mark.parametrize('chain', CHAINS, ids=[f'{a}->{b}' for a, b in CHAINS])
def test_export_feeds_downstream(
    chain: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: list[LightningCLI],
    exports: dict[str, Path],
) -> None:
    pretrain, downstream = chain
    monkeypatch.chdir(tmp_path)
    if pretrain not in exports:
        # Run alone: pre-train here (with the whole module, test_recipe_fits did).
        run(pretrain, tmp_path, cli, '--model.init_args.weights=null')
        (exports[pretrain],) = (tmp_path / 'outputs').glob(
            '*/exports/last_encoder.ckpt'
        )
    # A copy of the export with one tensor set to a marker value, so that the
    # test sees that the downstream backbone starts from the file (the seeded
    # random initialisation of both runs would otherwise look alike).
    key = 'blocks.1.mlp.fc1.weight'
    checkpoint = torch.load(exports[pretrain], weights_only=True)
    checkpoint['state_dict'][f'model.{key}'].fill_(0.5)
    export = tmp_path / 'marked_encoder.ckpt'
    torch.save(checkpoint, export)
    trainer = run(downstream, tmp_path, cli, f'--model.init_args.weights={export}')
    # 2 AdamW steps (lr <= 1e-3) move no value by more than a few 1e-3.
    (tuned,) = [
        v for k, v in trainer.lightning_module.state_dict().items() if k.endswith(key)
    ]
    torch.testing.assert_close(tuned, torch.full_like(tuned, 0.5), atol=1e-2, rtol=0)


def documented_commands() -> list[tuple[str, list[str]]]:
    """``torchgeo ...`` commands in the recipes' comments (``\\`` continues a line)."""
    commands = []
    for recipe in RECIPES:
        comments = [
            line.lstrip('#').strip()
            for line in recipe.read_text().splitlines()
            if line.startswith('#')
        ]
        command: str | None = None
        for line in comments:
            if command is None and line.startswith('torchgeo '):
                command = ''
            if command is not None:
                command += ' ' + line.removesuffix('\\')
                if not line.endswith('\\'):
                    commands.append((recipe.stem, shlex.split(command)[1:]))
                    command = None
    return commands


#: Overrides that docs/recipes.md gives as examples, valid for every recipe.
DOC_OVERRIDES = ['--data.dict_kwargs.root', 'data/x', '--trainer.devices', '8']


@pytest.mark.parametrize('recipe', [p.stem for p in RECIPES])
def test_documented_overrides_parse(
    recipe: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    commands = [c for name, c in documented_commands() if name == recipe]
    commands.append(['fit', '--config', f'recipes/{recipe}.yaml', *DOC_OVERRIDES])
    monkeypatch.chdir(REPO)
    for words in commands:
        assert words[:3] == ['fit', '--config', f'recipes/{recipe}.yaml'], words
        # --print_config checks every argument against the class signatures.
        with pytest.raises(SystemExit) as info:
            torchgeo_main.main([*words, '--print_config'])
        assert info.value.code in (0, None), words
        assert 'class_path: explora_geo.' in capsys.readouterr().out
