"""LoRA on whole linear layers and the ``targets`` of the adapter config."""

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from explora_geo.adapter import (
    ExPLoRAConfig,
    LinearLoRA,
    QKVLoRA,
    apply_delta,
    apply_explora,
    count_trainable_parameters,
    lora_layers,
    merge_and_unload,
    merge_lora,
    save_delta,
    unmerge_lora,
)

ALL = ('q', 'k', 'v', 'proj', 'fc1', 'fc2')


def randomize_lora(model: nn.Module) -> None:
    torch.manual_seed(1)
    for layer in lora_layers(model):
        nn.init.normal_(layer.lora_B, std=0.5)


def test_linear_lora_computes_formula() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 10)
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    layer = LinearLoRA(base, rank=3, alpha=6.0)
    x = torch.randn(4, 6)
    # B = 0 at initialisation: exactly the base layer.
    torch.testing.assert_close(layer(x), x @ weight.T + bias, rtol=0, atol=0)
    nn.init.normal_(layer.lora_B)
    expected = x @ weight.T + bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)
    layer.merge()
    torch.testing.assert_close(layer(x), expected)
    layer.unmerge()
    torch.testing.assert_close(layer.weight, weight)
    plain = layer.to_linear()
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(x), expected)
    with pytest.raises(ValueError, match='rank must be >= 1'):
        LinearLoRA(nn.Linear(2, 2), rank=0)


def test_all_targets_inject_both_layer_types(vit: nn.Module) -> None:
    apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4, targets=ALL))
    for i in range(2):
        qkv = vit.get_submodule(f'blocks.{i}.attn.qkv')
        assert isinstance(qkv, QKVLoRA)
        assert qkv.targets == ('q', 'k', 'v')
        for name in ('attn.proj', 'mlp.fc1', 'mlp.fc2'):
            layer = vit.get_submodule(f'blocks.{i}.{name}')
            assert isinstance(layer, LinearLoRA)
            assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
            assert not layer.weight.requires_grad
    # The unfrozen block gets no LoRA.
    assert type(vit.get_submodule('blocks.2.mlp.fc1')) is nn.Linear
    assert len(lora_layers(vit)) == 2 * 4


def test_mlp_only_targets(vit: nn.Module) -> None:
    apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(), rank=2, targets=('fc2',)))
    blocks = vit.get_submodule('blocks')
    assert isinstance(blocks, nn.Sequential)
    assert all(type(b.get_submodule('attn.qkv')) is nn.Linear for b in blocks)
    assert all(isinstance(b.get_submodule('mlp.fc2'), LinearLoRA) for b in blocks)


def test_merged_equals_unmerged_all_targets(
    vit: nn.Module, make_vit: Callable[..., nn.Module]
) -> None:
    vit.eval()
    apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(0,), rank=4, targets=ALL))
    randomize_lora(vit)
    x = torch.randn(2, 3, 28, 28)
    unmerged = vit(x)
    merge_lora(vit)
    assert (vit(x) - unmerged).abs().max() <= 1e-5
    unmerge_lora(vit)
    assert (vit(x) - unmerged).abs().max() <= 1e-5
    plain = merge_and_unload(vit)
    assert not lora_layers(plain)
    assert (plain(x) - unmerged).abs().max() <= 1e-5
    assert set(plain.state_dict()) == set(make_vit().state_dict())


def test_delta_round_trip_all_targets(
    tmp_path: Path, vit: nn.Module, make_vit: Callable[..., nn.Module]
) -> None:
    source = {k: v.clone() for k, v in vit.state_dict().items()}
    apply_explora(vit, ExPLoRAConfig(rank=3, targets=('v', 'proj', 'fc1')))
    randomize_lora(vit)
    vit.eval()
    x = torch.randn(2, 3, 28, 28)
    expected = vit(x)
    path = save_delta(vit, tmp_path / 'delta.safetensors')
    fresh = make_vit()
    fresh.load_state_dict(source)
    rebuilt = apply_delta(fresh, path).eval()
    assert (rebuilt(x) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ('targets', 'message'),
    [(('q', 'mlp'), 'distinct names among'), (('q', 'q'), 'distinct names among')],
)
def test_invalid_targets(targets: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExPLoRAConfig(targets=targets)
    with pytest.raises(ValueError, match='at least one matrix'):
        ExPLoRAConfig(targets=(), rank=4)


@pytest.mark.parametrize('rank', [8, 64])
def test_all_matrices_trainable_count_vitl(rank: int) -> None:
    config = ExPLoRAConfig(unfrozen_blocks=(-1,), rank=rank, targets=ALL)
    with torch.device('meta'):
        model = timm.create_model('explora_vitl_dino', num_classes=0)
    apply_explora(model, config)
    d, hidden, depth = 1024, 4096, 24
    # LoRA factors A (r x in) and B (out x r) per adapted matrix of a LoRA block.
    per_block = (
        3 * (rank * d + d * rank)  # q, k, v slices of qkv
        + (rank * d + d * rank)  # attn.proj
        + (rank * d + hidden * rank)  # mlp.fc1
        + (rank * hidden + d * rank)  # mlp.fc2
    )
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (8 * d * d + 5 * d)
    norms = 2 * 2 * d * (depth - 1) + 2 * d
    expected = block + (depth - 1) * per_block + norms + d  # + cls token
    assert per_block == 18 * rank * d
    assert count_trainable_parameters(model) == expected
