"""Precision chosen per device: the decision, the detection, the Lightning plugin."""

from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from torch import nn
from torchgeo.main import main

from explora_geo import precision as prec
from explora_geo.precision import (
    AutoPrecision,
    choose_precision,
    cpu_computes_bf16,
    resolve_precision,
)

ROOT = Path(__file__).parents[1]
SAPPHIRE_RAPIDS = {'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'}
ZEN4 = {'avx2', 'avx512f', 'avx512_bf16'}
SKYLAKE = {'avx2', 'avx512f', 'avx512bw'}
HASWELL = {'avx2', 'fma'}
GRAVITON3 = {'asimd', 'sve', 'bf16'}
GRAVITON2 = {'asimd', 'fp'}


@pytest.mark.parametrize(
    ('flags', 'cap', 'expected'),
    [
        (SAPPHIRE_RAPIDS, None, True),
        (ZEN4, None, True),
        (SKYLAKE, None, False),
        (HASWELL, None, False),
        (GRAVITON3, None, True),
        (GRAVITON2, None, False),
        (SAPPHIRE_RAPIDS, 'AVX2', False),
        (SAPPHIRE_RAPIDS, 'AVX512_CORE', False),
        (SAPPHIRE_RAPIDS, 'AVX512_CORE_BF16', True),
        (SAPPHIRE_RAPIDS, 'AVX512_CORE_AMX', True),
        (HASWELL, 'ALL', False),
    ],
)
def test_cpu_computes_bf16(flags: set[str], cap: str | None, expected: bool) -> None:
    assert cpu_computes_bf16(flags, cap) is expected


@pytest.mark.parametrize(
    ('device', 'cuda_bf16', 'cpu_bf16', 'expected'),
    [
        ('cuda', True, False, 'bf16-mixed'),  # A100, H100
        ('cuda', False, True, '16-mixed'),  # V100, T4: the CPU does not matter
        ('cpu', False, True, 'bf16-mixed'),
        ('cpu', True, False, '32-true'),  # a bf16 GPU does not help the CPU
        ('cpu', False, False, '32-true'),
        ('mps', False, True, '32-true'),
    ],
)
def test_choose_precision(
    device: str, cuda_bf16: bool, cpu_bf16: bool, expected: str
) -> None:
    assert choose_precision(device, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16) == expected


def test_detection_honours_onednn_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, 'cpu_flags', lambda: frozenset(SAPPHIRE_RAPIDS))
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    monkeypatch.delenv('DNNL_MAX_CPU_ISA', raising=False)
    assert resolve_precision('auto', 'cpu') == 'bf16-mixed'
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'avx2')
    assert resolve_precision('auto', 'cpu') == '32-true'
    assert resolve_precision('bf16', 'cpu') == 'bf16-mixed'
    assert resolve_precision('32', 'cpu') == '32-true'
    with pytest.raises(ValueError, match=r"one of auto, 32, bf16, got 'fp8'"):
        resolve_precision('fp8', 'cpu')


def test_cpu_flags_of_this_machine() -> None:
    flags = prec.cpu_flags()
    assert flags == prec.cpu_flags()
    if Path('/proc/cpuinfo').is_file():
        text = Path('/proc/cpuinfo').read_text()
        for flag in ('avx2', 'avx512_bf16', 'amx_bf16'):
            assert (flag in flags) == (f' {flag}' in text)


def test_environment_report_names_isa_and_versions() -> None:
    report = prec.environment_report(threads=1)
    lines = report.splitlines()
    assert lines[0].startswith('machine: ') and lines[0].endswith(', 1 threads')
    for flag in ('avx512_bf16', 'amx_bf16', 'avx512f', 'avx2'):
        assert f'{flag} yes' in lines[1] or f'{flag} no' in lines[1]
    assert f'torch {torch.__version__}' in lines[2]


class AutocastProbe(lightning.LightningModule):
    """Records whether CPU autocast is on, and its dtype, in each training step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.append(
            (torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu'))
        )
        return self.layer(batch[0]).float().pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(('cpu_bf16', 'autocast'), [(True, True), (False, False)])
def test_plugin_runs_training_steps_at_the_chosen_precision(
    monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool, autocast: bool
) -> None:
    monkeypatch.setattr(prec, 'cpu_computes_bf16', lambda flags, cap: cpu_bf16)
    messages: list[str] = []
    monkeypatch.setattr(prec, 'rank_zero_info', messages.append)
    plugin = AutoPrecision()
    model = AutocastProbe()
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(6, 4)), batch_size=2
    )
    trainer = lightning.Trainer(
        accelerator='cpu',
        max_epochs=2,
        plugins=[plugin],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    expected = 'bf16-mixed' if cpu_bf16 else '32-true'
    assert trainer.precision == expected
    assert model.seen == [(autocast, torch.bfloat16)] * 6
    assert messages == [
        f'AutoPrecision: {expected} on cpu '
        f'({"native bf16" if cpu_bf16 else "no native bf16"})'
    ]


def test_plugin_follows_the_model_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Built assuming CUDA (as on a GPU machine), then run on the CPU.
    monkeypatch.setattr(prec.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(prec, 'cuda_computes_bf16', lambda: True)
    monkeypatch.setattr(prec, 'cpu_computes_bf16', lambda flags, cap: False)
    plugin = AutoPrecision()
    assert (plugin.precision, plugin.device_type) == ('bf16-mixed', 'cuda')
    monkeypatch.setattr(prec, 'rank_zero_info', lambda message: None)
    plugin.connect(nn.Linear(2, 2), [], [])
    assert (plugin.precision, plugin.device_type) == ('32-true', 'cpu')
    with plugin.forward_context():
        assert not torch.is_autocast_enabled('cpu')
        assert not torch.is_autocast_enabled('cuda')


@pytest.mark.parametrize('isa_cap', [None, 'AVX2'])
def test_plugin_through_torchgeo_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isa_cap: str | None
) -> None:
    # The way recipes use it: `plugins` under `trainer:` in a `torchgeo fit` YAML;
    # ONEDNN_MAX_CPU_ISA=AVX2 makes any CPU one without native bf16.
    monkeypatch.delenv('DNNL_MAX_CPU_ISA', raising=False)
    if isa_cap is None:
        monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    else:
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', isa_cap)
    config = tmp_path / 'config.yaml'
    config.write_text(
        f"""
trainer:
  plugins:
    - class_path: explora_geo.precision.AutoPrecision
  accelerator: cpu
  devices: 1
  fast_dev_run: 1
  logger: false
model:
  class_path: explora_geo.tasks.ClassificationTask
  init_args:
    model: explora_vitb_dino
    num_classes: 62
    finetune: lora
    model_kwargs: {{depth: 2, embed_dim: 32, num_heads: 2, img_size: 28}}
data:
  class_path: explora_geo.datamodules.FMoWDataModule
  init_args:
    batch_size: 2
    image_size: 28
  dict_kwargs:
    root: {ROOT / 'tests' / 'data' / 'fmow'}
"""
    )
    messages: list[str] = []
    monkeypatch.setattr(prec, 'rank_zero_info', messages.append)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    main(['fit', '--config', str(config)])
    expected = prec.detect_precision('cpu')
    if isa_cap is not None:
        assert expected == '32-true'
    assert len(messages) == 1
    assert messages[0].startswith(f'AutoPrecision: {expected} on cpu')
