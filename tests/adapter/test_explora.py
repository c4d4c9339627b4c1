import os
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from explora_geo.adapter import (
    ExPLoRAConfig,
    QKVLoRA,
    apply_delta,
    apply_explora,
    count_trainable_parameters,
    load_delta,
    lora_layers,
    merge_and_unload,
    merge_lora,
    save_delta,
    trainable_parameters,
    unmerge_lora,
)


def randomize_lora(model: nn.Module) -> None:
    torch.manual_seed(1)
    for layer in lora_layers(model):
        nn.init.normal_(layer.lora_B, std=0.5)


def meta_vitl(config: ExPLoRAConfig, name: str = 'explora_vitl_dino') -> nn.Module:
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=0)
    return apply_explora(model, config)


# Counts reported in the paper for ViT-L (24 blocks, D = 1024), trainable in the stage.
@pytest.mark.parametrize(
    ('config', 'paper_millions'),
    [
        (ExPLoRAConfig(unfrozen_blocks=(-1,), rank=0), 12.7),
        (ExPLoRAConfig(unfrozen_blocks=(-1,), rank=64), 18.7),
        (ExPLoRAConfig(unfrozen_blocks=(0, -2, -1), rank=64), 43.4),
        (ExPLoRAConfig.lora_finetune(rank=8), 0.8),
    ],
)
def test_paper_trainable_counts_vitl(
    config: ExPLoRAConfig, paper_millions: float
) -> None:
    model = meta_vitl(config)
    count = count_trainable_parameters(model)
    assert round(count / 1e6, 1) == paper_millions
    # Exact value from the architecture: unfrozen blocks + LoRA(Q,V) of the others
    # + norms outside unfrozen blocks (2 per block + final) + cls token.
    d, depth = 1024, 24
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (8 * d * d + 5 * d)
    n_unfrozen = len(config.unfrozen_blocks)
    lora = 2 * 2 * config.rank * d * (depth - n_unfrozen)
    norms = (2 * 2 * d * (depth - n_unfrozen) + 2 * d) if config.train_norms else 0
    cls = d if config.train_cls_token else 0
    assert count == n_unfrozen * block + lora + norms + cls


def test_vitb_count_about_9m() -> None:
    model = meta_vitl(ExPLoRAConfig(), name='explora_vitb_dino')
    assert 9.0e6 <= count_trainable_parameters(model) < 9.5e6


def test_trainable_tensors(vit: nn.Module) -> None:
    apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4))
    names = set(trainable_parameters(vit))
    last = {
        f'blocks.2.{n}' for n, _ in vit.get_submodule('blocks.2').named_parameters()
    }
    expected = {'cls_token', 'norm.weight', 'norm.bias'} | last
    for i in (0, 1):
        expected |= {
            f'blocks.{i}.attn.qkv.lora_A',
            f'blocks.{i}.attn.qkv.lora_B',
            f'blocks.{i}.norm1.weight',
            f'blocks.{i}.norm1.bias',
            f'blocks.{i}.norm2.weight',
            f'blocks.{i}.norm2.bias',
        }
    assert names == expected
    # Frozen: LayerScale and qkv bias of LoRA blocks, pos embed, patch embed.
    params = dict(vit.named_parameters())
    for frozen in (
        'blocks.0.ls1.gamma',
        'blocks.0.attn.qkv.bias',
        'pos_embed',
        'patch_embed.proj.weight',
    ):
        assert not params[frozen].requires_grad
    # The unfrozen block has no LoRA.
    assert not isinstance(vit.get_submodule('blocks.2.attn.qkv'), QKVLoRA)
    assert isinstance(vit.get_submodule('blocks.0.attn.qkv'), QKVLoRA)


def test_optional_trainables(vit: nn.Module) -> None:
    config = ExPLoRAConfig(
        unfrozen_blocks=(0,),
        rank=2,
        train_patch_embed=True,
        train_pos_embed=True,
        trainable=('head.*',),
    )
    apply_explora(vit, config)
    names = set(trainable_parameters(vit))
    assert {'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias'} <= names


def test_init_equals_source(vit: nn.Module) -> None:
    x = torch.randn(2, 3, 28, 28)
    vit.eval()
    expected = vit(x)
    apply_explora(vit, ExPLoRAConfig(rank=4))
    torch.testing.assert_close(vit(x), expected, rtol=0, atol=0)


def test_merged_equals_unmerged(
    vit: nn.Module, make_vit: Callable[..., nn.Module]
) -> None:
    vit.eval()
    apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(0,), rank=4))
    randomize_lora(vit)
    x = torch.randn(2, 3, 28, 28)
    unmerged = vit(x)
    merge_lora(vit)
    assert (vit(x) - unmerged).abs().max() <= 1e-5
    unmerge_lora(vit)
    assert (vit(x) - unmerged).abs().max() <= 1e-5
    plain = merge_and_unload(vit)
    assert not lora_layers(plain)
    assert not hasattr(plain, 'explora_config')
    assert (plain(x) - unmerged).abs().max() <= 1e-5
    assert set(plain.state_dict()) == set(make_vit().state_dict())


def test_only_delta_gets_gradients(vit: nn.Module) -> None:
    apply_explora(vit, ExPLoRAConfig(rank=2))
    randomize_lora(vit)
    vit(torch.randn(1, 3, 28, 28)).sum().backward()
    for name, param in vit.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


def test_double_apply_rejected(vit: nn.Module) -> None:
    apply_explora(vit, ExPLoRAConfig(rank=2))
    with pytest.raises(ValueError, match='already has an ExPLoRA adapter'):
        apply_explora(vit, ExPLoRAConfig(rank=2))


def test_block_index_out_of_range(vit: nn.Module) -> None:
    with pytest.raises(
        IndexError, match='block index 5 out of range for a ViT of depth 3'
    ):
        apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(5,)))


def test_no_blocks() -> None:
    with pytest.raises(AttributeError, match='no transformer blocks at .blocks'):
        apply_explora(nn.Linear(2, 2), ExPLoRAConfig())


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [({'rank': -1}, 'rank'), ({'alpha': 0}, 'alpha'), ({'dropout': 1.0}, 'dropout')],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExPLoRAConfig(**kwargs)


def test_config_round_trip() -> None:
    # Lists, as a YAML config gives them: stored as the declared tuples.
    config = ExPLoRAConfig(
        unfrozen_blocks=[0, -1],  # type: ignore[arg-type]
        rank=32,
        trainable=['head.*'],  # type: ignore[arg-type]
    )
    assert config.unfrozen_blocks == (0, -1)
    assert ExPLoRAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match='unknown ExPLoRAConfig fields'):
        ExPLoRAConfig.from_dict({'rank': 2, 'bogus': 1})


def test_delta_round_trip(
    tmp_path: Path, vit: nn.Module, make_vit: Callable[..., nn.Module]
) -> None:
    source_state = {k: v.clone() for k, v in vit.state_dict().items()}
    config = ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4)
    apply_explora(vit, config)
    randomize_lora(vit)
    with torch.no_grad():
        vit.get_parameter('blocks.2.mlp.fc1.weight').add_(0.1)
        vit.get_parameter('norm.weight').mul_(1.5)
    vit.eval()
    x = torch.randn(2, 3, 28, 28)
    expected = vit(x)
    path = save_delta(
        vit, tmp_path / 'sub' / 'delta.safetensors', metadata={'model': 'tiny'}
    )
    assert [p.name for p in path.parent.iterdir()] == ['delta.safetensors']
    tensors, loaded_config, meta = load_delta(path)
    assert loaded_config == config
    assert meta == {'model': 'tiny'}
    assert set(tensors) == set(trainable_parameters(vit))
    # Much smaller than the model: only trainable tensors are stored.
    assert sum(t.numel() for t in tensors.values()) == count_trainable_parameters(vit)

    fresh = make_vit()
    fresh.load_state_dict(source_state)
    rebuilt = apply_delta(fresh, path).eval()
    assert not lora_layers(rebuilt)
    assert (rebuilt(x) - expected).abs().max() <= 1e-5

    fresh = make_vit()
    fresh.load_state_dict(source_state)
    kept = apply_delta(fresh, path, merge=False).eval()
    assert lora_layers(kept)
    torch.testing.assert_close(kept(x), expected)


def test_delta_mismatch(
    tmp_path: Path, vit: nn.Module, make_vit: Callable[..., nn.Module]
) -> None:
    apply_explora(vit, ExPLoRAConfig(rank=4))
    path = save_delta(vit, tmp_path / 'd.safetensors')
    deeper = make_vit(depth=4)
    with pytest.raises(KeyError, match=r'missing keys: \[.*blocks\.3'):
        apply_delta(deeper, path)
    wider = make_vit(embed_dim=64)
    with pytest.raises(ValueError, match='has shape'):
        apply_delta(wider, path)


def test_delta_rejects_merged_and_foreign(tmp_path: Path, vit: nn.Module) -> None:
    with pytest.raises(ValueError, match='no ExPLoRA adapter'):
        save_delta(vit, tmp_path / 'x.safetensors')
    apply_explora(vit, ExPLoRAConfig(rank=2))
    merge_lora(vit)
    with pytest.raises(ValueError, match='unmerged'):
        save_delta(vit, tmp_path / 'x.safetensors')
    assert not os.listdir(tmp_path)
    import safetensors.torch

    foreign = tmp_path / 'foreign.safetensors'
    safetensors.torch.save_file({'a': torch.zeros(1)}, str(foreign))
    with pytest.raises(ValueError, match='not an explora_geo delta file'):
        load_delta(foreign)
