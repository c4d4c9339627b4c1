import pytest
import torch
from torch import nn

from explora_geo.adapter import QKVLoRA


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


def reference_with_grad(layer: QKVLoRA, x: torch.Tensor) -> torch.Tensor:
    """The formula of the layer on its live parameters, for any targets."""
    d = layer.in_features
    out = nn.functional.linear(x, layer.weight, layer.bias)
    parts = list(out.split(d, dim=-1))
    for i, target in enumerate(layer.targets):
        slot = 'qkv'.index(target)
        update = x @ layer.lora_A[i].T @ layer.lora_B[i].T
        parts[slot] = parts[slot] + layer.scaling * update
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize('targets', [('q', 'v'), ('k',), ('q', 'k', 'v')])
@pytest.mark.parametrize('train_weight', [False, True])
@pytest.mark.parametrize('bias', [True, False])
def test_gradients_match_reference(
    targets: tuple[str, ...], train_weight: bool, bias: bool
) -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 24, bias=bias).double()
    base.requires_grad_(train_weight)
    layer = QKVLoRA(base, rank=3, alpha=2.0, targets=targets)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 5, 24, dtype=torch.float64)
    params = [p for p in layer.parameters() if p.requires_grad]
    assert len(params) == 2 + (1 + bias) * train_weight
    got = torch.autograd.grad(layer(x), [x, *params], grad_out)
    expected = torch.autograd.grad(
        reference_with_grad(layer, x), [x, *params], grad_out
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert torch.autograd.gradcheck(
        lambda x, a, b: QKVLoRA.forward(layer, x), (x, layer.lora_A, layer.lora_B)
    )


def test_dropout_applies_to_the_adapter_input_only() -> None:
    torch.manual_seed(0)
    layer = QKVLoRA(nn.Linear(8, 24), rank=2, dropout=0.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 8, requires_grad=True)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.5)
    d = 8
    expected = nn.functional.linear(x, layer.weight, layer.bias)
    q = (
        expected[:, :d]
        + layer.scaling * dropped @ layer.lora_A[0].T @ layer.lora_B[0].T
    )
    v = expected[:, 2 * d :] + layer.scaling * (
        dropped @ layer.lora_A[1].T @ layer.lora_B[1].T
    )
    expected = torch.cat([q, expected[:, d : 2 * d], v], dim=-1)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, layer.lora_A, layer.lora_B], g)
    want = torch.autograd.grad(expected, [x, layer.lora_A, layer.lora_B], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    layer.eval()
    torch.testing.assert_close(layer(x), reference(layer, x))


def test_autocast_computes_in_bf16() -> None:
    torch.manual_seed(0)
    layer = QKVLoRA(nn.Linear(16, 48), rank=4)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
        linear = nn.functional.linear(x, layer.weight, layer.bias)
    assert out.dtype == linear.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(layer, x), atol=0.1, rtol=0.02)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert layer.lora_A.grad is not None and layer.lora_A.grad.dtype == torch.float32


def saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).float().sum().backward()
    return sum(saved.values())


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_saves_no_more_activation_than_peft(dtype: torch.dtype) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(64, 192)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.qkv(x)

    torch.manual_seed(0)
    x = torch.randn(4, 50, 64, requires_grad=True)
    peft_model = inject_adapter_in_model(
        LoraConfig(r=8, lora_alpha=8, target_modules=['qkv']), Attention()
    )
    peft_model.get_submodule('qkv.base_layer').requires_grad_(False)
    base = nn.Linear(64, 192)
    base.requires_grad_(False)
    ours = QKVLoRA(base, rank=8, alpha=8)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype != torch.float32):
        peft_bytes = saved_activation_bytes(peft_model, x)
        our_bytes = saved_activation_bytes(ours, x)
    # Ours saves the input alone (in the compute dtype); peft also its rank-r
    # intermediate, and under autocast the bf16 copies of the weights.
    assert our_bytes == x.numel() * dtype.itemsize
    assert our_bytes <= peft_bytes
    assert peft_bytes >= x.numel() * dtype.itemsize + 200 * 8 * dtype.itemsize
