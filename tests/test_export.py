from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from explora_geo import apply_delta, create_model
from explora_geo.adapter import load_delta
from explora_geo.export import export_from_checkpoint, resolve_task_class
from explora_geo.tasks.explora_mae import ExPLoRAMAE
from tests.data.checkpoints import layouts
from tests.tasks.tiny_mae import (
    IMG,
    TINY,
    loader,
    single_thread,  # noqa: F401  (autouse fixture)
    task_kwargs,
    trainer,
)


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExPLoRAMAE, Path, Path]:
    """A task trained 3 steps from a source file, and its Lightning checkpoint."""
    root = tmp_path_factory.mktemp('trained')
    torch.manual_seed(0)
    checkpoint = layouts.mae(d=32, depth=2, grid=4, patch=8, dec_d=16, dec_depth=2)
    checkpoint['model'] = {k: v * 0.1 for k, v in checkpoint['model'].items()}
    source = root / 'source.pth'
    torch.save(checkpoint, source)
    task = ExPLoRAMAE(**task_kwargs(weights=str(source), lr=1e-2, lr_scaling='none'))
    saver = ModelCheckpoint(dirpath=root / 'ckpt', save_last=True)
    trainer(root, max_steps=3, enable_checkpointing=True, callbacks=[saver]).fit(
        task, loader()
    )
    return task, root / 'ckpt' / 'last.ckpt', source


def test_round_trip(trained: tuple[ExPLoRAMAE, Path, Path], tmp_path: Path) -> None:
    task, ckpt, source = trained
    live = task.export(tmp_path / 'live', 'live')
    files = export_from_checkpoint(ckpt, tmp_path / 'out')
    assert files['encoder'] == tmp_path / 'out' / 'last_encoder.ckpt'
    assert files['delta'] == tmp_path / 'out' / 'last_delta.safetensors'

    expected = torch.load(live['encoder'], weights_only=True)['state_dict']
    written = torch.load(files['encoder'], weights_only=True)
    assert written['hyper_parameters']['model'] == TINY
    assert written['state_dict'].keys() == expected.keys()
    for name, value in written['state_dict'].items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)

    tensors, config, meta = load_delta(files['delta'])
    assert meta['weights'] == str(source)
    assert set(tensors) == {
        n.removeprefix('model.encoder.')
        for n, p in task.named_parameters()
        if p.requires_grad and n.startswith('model.encoder.')
    }
    assert config == task.adapter
    merged = create_model(TINY, weights=files['encoder'], num_classes=0).eval()
    rebuilt = apply_delta(
        create_model(TINY, weights=meta['weights'], num_classes=0), files['delta']
    )
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        assert (rebuilt.eval()(x) - merged(x)).abs().max() <= 1e-5


def test_task_argument_and_cli_class_path(
    trained: tuple[ExPLoRAMAE, Path, Path], tmp_path: Path
) -> None:
    _, ckpt, _ = trained
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint['explora_task']
    anonymous = tmp_path / 'anonymous.ckpt'
    torch.save(checkpoint, anonymous)
    with pytest.raises(ValueError, match=r'does not name its task class.*pass task='):
        export_from_checkpoint(anonymous, tmp_path / 'a')
    files = export_from_checkpoint(anonymous, tmp_path / 'b', task=ExPLoRAMAE, tag='t')
    assert files['encoder'].name == 't_encoder.ckpt'

    # What LightningCLI (torchgeo fit) records.
    checkpoint['hyper_parameters']['_class_path'] = (
        'explora_geo.tasks.explora_mae.ExPLoRAMAE'
    )
    cli = tmp_path / 'cli.ckpt'
    torch.save(checkpoint, cli)
    assert export_from_checkpoint(cli, tmp_path / 'c')['delta'].is_file()


def test_resolve_task_class_refuses_foreign_classes() -> None:
    with pytest.raises(ValueError, match='module that is not imported'):
        resolve_task_class('not_a_module_xyz.Task', {})
    with pytest.raises(TypeError, match='is not an ExPLoRAPretrainingTask subclass'):
        resolve_task_class('torch.nn.Linear', {})
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        resolve_task_class('explora_geo.tasks.explora_mae.Nope', {})
    assert (
        resolve_task_class(
            None, {'explora_task': 'explora_geo.tasks.explora_mae.ExPLoRAMAE'}
        )
        is ExPLoRAMAE
    )


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        export_from_checkpoint(tmp_path / 'missing.ckpt', tmp_path)
    weights = tmp_path / 'weights.pth'
    torch.save({'model': {'w': torch.zeros(1)}}, weights)
    with pytest.raises(ValueError, match=r"not a Lightning checkpoint .*\['model'\]"):
        export_from_checkpoint(weights, tmp_path)
