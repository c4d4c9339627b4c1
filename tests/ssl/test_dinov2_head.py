import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

from explora_geo.ssl.dinov2_head import DINOv2Head, WeightNormLinear


def test_shapes_and_names() -> None:
    head = DINOv2Head(64, hidden_dim=48, bottleneck_dim=16, num_prototypes=128)
    shapes = {n: tuple(p.shape) for n, p in head.named_parameters()}
    assert shapes == {
        'layers.0.weight': (48, 64),
        'layers.0.bias': (48,),
        'layers.2.weight': (48, 48),
        'layers.2.bias': (48,),
        'layers.4.weight': (16, 48),
        'layers.4.bias': (16,),
        'last_layer.weight_g': (128, 1),
        'last_layer.weight_v': (128, 16),
    }
    assert [type(m) for m in head.layers] == [
        nn.Linear,
        nn.GELU,
        nn.Linear,
        nn.GELU,
        nn.Linear,
    ]
    assert not any('bias' in n for n, _ in head.last_layer.named_parameters())
    assert head(torch.randn(5, 64)).shape == (5, 128)


def test_paper_dimensions_on_meta() -> None:
    with torch.device('meta'):
        head = DINOv2Head(1024)
    assert head.layers[0].weight.shape == (2048, 1024)
    assert head.layers[4].weight.shape == (256, 2048)
    assert head.last_layer.weight_v.shape == (65536, 256)


def test_gain_starts_at_one_and_trains() -> None:
    torch.manual_seed(0)
    head = DINOv2Head(32, hidden_dim=32, bottleneck_dim=8, num_prototypes=40)
    g = head.last_layer.weight_g
    v = head.last_layer.weight_v
    assert torch.equal(g, torch.ones_like(g))
    # DinoV2's DINOHead (and the ExPLoRA code) train the gain with the prototypes.
    assert g.requires_grad
    assert head.last_layer_parameters() == [g, v]
    # Gain 1 and a normalised bottleneck: the logits are cosine similarities.
    x = torch.randn(7, 32)
    bottleneck = nn.functional.normalize(head.layers(x), dim=-1)
    prototypes = nn.functional.normalize(v, dim=-1)
    torch.testing.assert_close(head(x), bottleneck @ prototypes.t())
    assert float(head(x * 100).detach().abs().max()) <= 1 + 1e-5


def test_init_and_gradients() -> None:
    torch.manual_seed(0)
    head = DINOv2Head(256, hidden_dim=512, bottleneck_dim=64, num_prototypes=32)
    w = head.layers[2].weight.detach()
    # Truncated normal, std 0.02 (DinoV2); biases zero.
    assert float(w.std()) == pytest.approx(0.02, rel=0.05)
    assert float(w.abs().max()) <= 2.0
    assert all(not head.layers[i].bias.detach().any() for i in (0, 2, 4))
    head(torch.randn(4, 256)).sum().backward()
    assert head.last_layer.weight_v.grad is not None
    assert head.last_layer.weight_g.grad is not None


def test_deep_copy_and_pickle_after_forward() -> None:
    # The hook-based weight norm fails both (non-leaf weight attribute), the
    # parametrisation refuses pickling.
    head = DINOv2Head(8, hidden_dim=8, bottleneck_dim=4, num_prototypes=8)
    x = torch.randn(2, 8)
    head(x).sum().backward()
    clone = copy.deepcopy(head)
    torch.testing.assert_close(clone(x), head(x))
    restored = pickle.loads(pickle.dumps(head))
    torch.testing.assert_close(restored(x), head(x))


def test_weight_norm_linear_matches_torch() -> None:
    torch.manual_seed(0)
    layer = WeightNormLinear(6, 5)
    with torch.no_grad():
        layer.weight_g.mul_(torch.rand(5, 1) + 0.5)
        layer.weight_v.add_(torch.randn(5, 6))
    reference = torch.nn.utils.parametrizations.weight_norm(nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(layer.weight_g)
        reference.parametrizations.weight.original1.copy_(layer.weight_v)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), reference(x))
    # At initialisation the weight is the nn.Linear weight v.
    fresh = WeightNormLinear(6, 5)
    torch.testing.assert_close(fresh.weight, fresh.weight_v)


def test_no_deprecation_noise_and_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        DINOv2Head(8, hidden_dim=8, bottleneck_dim=4, num_prototypes=8)
    with pytest.raises(
        ValueError, match=r"dimensions must be >= 1, got \{'num_prototypes': 0\}"
    ):
        DINOv2Head(8, num_prototypes=0)
