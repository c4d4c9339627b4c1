import pytest
import torch
from torch import nn

from explora_geo.peft import QKVLoRA


def reference(layer: QKVLoRA, x: torch.Tensor) -> torch.Tensor:
    """y = W x + b + s [B_q A_q x, 0, B_v A_v x], written out per slice."""
    d = layer.in_features
    w, b = layer.weight.detach(), layer.bias.detach()
    out = x @ w.T + b
    q, k, v = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
    a_q, a_v = layer.lora_A[0].detach(), layer.lora_A[1].detach()
    b_q, b_v = layer.lora_B[0].detach(), layer.lora_B[1].detach()
    q = q + layer.scaling * (x @ a_q.T @ b_q.T)
    v = v + layer.scaling * (x @ a_v.T @ b_v.T)
    return torch.cat([q, k, v], dim=-1)


@pytest.fixture
def layer() -> QKVLoRA:
    torch.manual_seed(0)
    base = nn.Linear(16, 48)
    layer = QKVLoRA(base, rank=4, alpha=2.0)
    nn.init.normal_(layer.lora_B)
    return layer


def test_init_equals_base() -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 48)
    x = torch.randn(3, 5, 16)
    expected = base(x)
    layer = QKVLoRA(base, rank=4)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    # Shares the tensors instead of copying them.
    assert layer.weight is base.weight and layer.bias is base.bias
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / 16**0.5  # kaiming-uniform with a = sqrt(5) on fan_in 16
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > bound / 2


def test_forward_matches_reference(layer: QKVLoRA) -> None:
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x), reference(layer, x))
    assert layer.scaling == 0.5


def test_key_slice_untouched(layer: QKVLoRA) -> None:
    x = torch.randn(4, 16)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x)[:, 16:32], plain[:, 16:32])
    assert not torch.allclose(layer(x)[:, :16], plain[:, :16])


def test_merge_unmerge(layer: QKVLoRA) -> None:
    x = torch.randn(4, 16)
    w0 = layer.weight.detach().clone()
    y = layer(x)
    layer.merge()
    layer.merge()  # idempotent
    assert layer.merged
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.weight.detach(), w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y)


def test_delta_weight_rows(layer: QKVLoRA) -> None:
    delta = layer.delta_weight().detach()
    assert delta.shape == (48, 16)
    assert torch.count_nonzero(delta[16:32]) == 0
    expected_q = layer.scaling * layer.lora_B[0] @ layer.lora_A[0]
    torch.testing.assert_close(delta[:16], expected_q.detach())


def test_to_linear(layer: QKVLoRA) -> None:
    x = torch.randn(4, 16)
    y = layer(x)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear
    torch.testing.assert_close(linear(x), y, atol=1e-5, rtol=0)


def test_gradients_flow_only_to_factors() -> None:
    base = nn.Linear(8, 24)
    base.requires_grad_(False)
    layer = QKVLoRA(base, rank=2)
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    assert layer.weight.grad is None


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'rank': 0}, 'rank must be >= 1'),
        ({'rank': 2, 'targets': ('q', 'x')}, "among 'q', 'k', 'v'"),
        ({'rank': 2, 'targets': ('q', 'q')}, 'distinct'),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QKVLoRA(nn.Linear(8, 24), **kwargs)


def test_not_fused() -> None:
    with pytest.raises(ValueError, match='out_features=16'):
        QKVLoRA(nn.Linear(8, 16), rank=2)


def test_targets_k_only() -> None:
    torch.manual_seed(0)
    layer = QKVLoRA(nn.Linear(8, 24), rank=2, targets=('k',))
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 8)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    out = layer(x)
    torch.testing.assert_close(out[:, :8], plain[:, :8])
    torch.testing.assert_close(out[:, 16:], plain[:, 16:])
    assert not torch.allclose(out[:, 8:16], plain[:, 8:16])
