import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from explora_geo.adapter import ExPLoRAConfig, apply_explora, lora_layers, save_delta
from explora_geo.cli import main, run


def test_inspect_paper_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['inspect', 'explora_vitl_dino']) == 0
    assert 'trainable: 18,724,864 (18.7M' in capsys.readouterr().out
    assert main(['inspect', 'explora_vitl_dino', '--unfrozen-blocks', '0,-2,-1']) == 0
    assert '43,388,928' in capsys.readouterr().out


def test_merge_and_inspect_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs: dict[str, Any] = {
        'depth': 2,
        'embed_dim': 32,
        'num_heads': 2,
        'img_size': 28,
        'num_classes': 0,
    }
    torch.manual_seed(0)
    source = timm.create_model('explora_vitb_dino', **kwargs)
    weights = tmp_path / 'source.pth'
    torch.save(source.state_dict(), weights)
    adapted = timm.create_model('explora_vitb_dino', **kwargs)
    adapted.load_state_dict(source.state_dict())
    apply_explora(adapted, ExPLoRAConfig(rank=4))
    for layer in lora_layers(adapted):
        torch.nn.init.normal_(layer.lora_B)
    delta = save_delta(
        adapted,
        tmp_path / 'delta.safetensors',
        metadata={
            'model': 'explora_vitb_dino',
            'img_size': 28,
            'model_kwargs': {'depth': 2, 'embed_dim': 32, 'num_heads': 2},
        },
    )
    out = tmp_path / 'merged.ckpt'
    assert (
        main(['merge', str(delta), '--weights', str(weights), '--output', str(out)])
        == 0
    )
    assert 'merged encoder written' in capsys.readouterr().out
    merged = timm.create_model('explora_vitb_dino', **kwargs)
    state = torch.load(out, weights_only=True)
    merged.load_state_dict(
        {k.removeprefix('model.'): v for k, v in state['state_dict'].items()}
    )
    x = torch.randn(2, 3, 28, 28)
    adapted.eval()
    merged.eval()
    assert (merged(x) - adapted(x)).abs().max() <= 1e-5

    assert main(['inspect', str(delta)]) == 0
    printed = capsys.readouterr().out
    assert 'Δ_T file' in printed and '"rank": 4' in printed
    assert main(['inspect', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'model.pos_embed' not in printed and 'pos_embed (1, 5, 32)' in printed
    assert 'encoder export of explora_vitb_dino, source weights' in printed
    assert str(weights) in printed and 'input: null' in printed


def test_console_script_help() -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'explora_geo.cli', '--help'],
        capture_output=True,
        text=True,
        check=True,
    )
    for verb in ('demo', 'export', 'merge', 'inspect', 'predict'):
        assert verb in result.stdout


def test_console_script_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / 'no_such.ckpt'
    args = [str(missing), str(missing), '-o', str(tmp_path / 'o.tif')]
    args += ['--compress', 'lzw', '--compress-level', '3']
    result = subprocess.run(
        [sys.executable, '-m', 'explora_geo.cli', 'predict', *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "explora-geo: error: compress 'lzw' has no levels (got compress_level=3); "
        "levels exist for ['deflate', 'zstd']"
    )
    assert run(['inspect', str(missing)]) == 2
    assert (
        capsys.readouterr().err
        == f'explora-geo: error: {missing}: no such file (nor a model name)\n'
    )
    assert run(['inspect', 'not_a_model_name']) == 2
    assert capsys.readouterr().err.startswith(
        'explora-geo: error: not_a_model_name: neither a file nor a model name'
    )
