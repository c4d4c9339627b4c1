import copy
from typing import cast

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from explora_geo.adapter import (
    ExPLoRAConfig,
    QKVLoRA,
    apply_explora,
    count_trainable_parameters,
)
from explora_geo.ssl.dinov2 import vit_tokens
from explora_geo.ssl.dinov2_head import DINOv2Head
from explora_geo.ssl.teacher import EMATeacher, swapped_tensors


def student_pair() -> tuple[VisionTransformer, nn.Module]:
    torch.manual_seed(0)
    vit = timm.create_model(
        'explora_vitb_dino',
        depth=2,
        embed_dim=32,
        num_heads=2,
        img_size=28,
        num_classes=0,
        drop_path_rate=0.2,
        dynamic_img_size=True,
    )
    # The adapter is injected in place: the encoder is the timm ViT.
    encoder = apply_explora(vit, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=4))
    head = DINOv2Head(32, hidden_dim=24, bottleneck_dim=8, num_prototypes=16)
    return cast(VisionTransformer, encoder), head


def first_qkv(model: nn.Module) -> QKVLoRA:
    """The adapted qkv layer of the first block."""
    layer = model.get_submodule('blocks.0.attn.qkv')
    assert isinstance(layer, QKVLoRA)
    return layer


def perturb(module: nn.Module, scale: float = 0.05) -> None:
    """Stand-in for an optimiser step on the trainable tensors."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def naive_update(naive: nn.Module, student: nn.Module, m: float) -> None:
    """A deep-copied teacher updated the same way (trainable tensors only)."""
    params = dict(naive.named_parameters())
    with torch.no_grad():
        for name, p in student.named_parameters():
            if p.requires_grad:
                params[name].mul_(m).add_(p, alpha=1 - m)


def test_equals_deep_copied_teacher_after_updates() -> None:
    encoder, head = student_pair()
    naive_encoder, naive_head = copy.deepcopy(encoder), copy.deepcopy(head)
    teacher_encoder, teacher_head = EMATeacher(encoder), EMATeacher(head)
    x = torch.rand(3, 3, 28, 28)
    for m in (0.9, 0.5, 0.99, 0.7):
        perturb(encoder)
        perturb(head)
        teacher_encoder.update(m)
        teacher_head.update(m)
        naive_update(naive_encoder, encoder, m)
        naive_update(naive_head, head, m)
    encoder.train()
    tokens = teacher_encoder.run(vit_tokens, x)
    out = teacher_head(tokens[:, 0])
    naive_encoder.eval()
    with torch.no_grad():
        expected_tokens = vit_tokens(naive_encoder, x)
        expected = naive_head(expected_tokens[:, 0])
    torch.testing.assert_close(tokens, expected_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # The teacher has moved away from the student.
    with torch.no_grad():
        student_tokens = vit_tokens(encoder.eval(), x)
    assert not torch.allclose(tokens, student_tokens, atol=1e-3)
    # materialize() is the naive teacher.
    copy_ = teacher_encoder.materialize()
    for (name, a), (_, b) in zip(
        copy_.state_dict().items(), naive_encoder.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert copy_.explora_config == encoder.explora_config
    assert {n for n, p in copy_.named_parameters() if p.requires_grad} == {
        n for n, p in encoder.named_parameters() if p.requires_grad
    }


def test_stores_only_trainable_tensors() -> None:
    encoder, _ = student_pair()
    teacher = EMATeacher(encoder)
    assert list(teacher.parameters()) == []
    stored = sum(b.numel() for b in teacher.buffers())
    assert stored == count_trainable_parameters(encoder)
    total = sum(p.numel() for p in encoder.parameters())
    assert stored < 0.8 * total
    # No buffer aliases a student tensor: the EMA is a copy.
    student_ptrs = {p.data_ptr() for p in encoder.parameters()}
    assert not {b.data_ptr() for b in teacher.buffers()} & student_ptrs
    # State-dict names are the student's parameter names.
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert list(teacher.state_dict()) == trainable
    assert (
        'blocks.0.attn.qkv.lora_A' in trainable
        and 'blocks.1.mlp.fc1.weight' in trainable
    )


def test_frozen_tensors_are_the_students() -> None:
    encoder, _ = student_pair()
    teacher = EMATeacher(encoder)
    seen: dict[str, Tensor] = {}

    def grab(module: nn.Module) -> None:
        seen.update(dict(module.named_parameters()))
        seen['lora'] = first_qkv(module).lora_A

    teacher.run(grab)
    frozen = first_qkv(encoder).weight
    assert seen['blocks.0.attn.qkv.weight'] is frozen
    assert seen['lora'] is teacher.get_buffer('blocks.0.attn.qkv.lora_A')
    # Restored afterwards.
    assert isinstance(first_qkv(encoder).lora_A, nn.Parameter)


def test_state_dict_round_trip_and_modes() -> None:
    encoder, _ = student_pair()
    teacher = EMATeacher(encoder)
    perturb(encoder)
    teacher.update(0.5)
    state = copy.deepcopy(teacher.state_dict())
    fresh = EMATeacher(student_pair()[0])
    fresh.load_state_dict(state)
    for name, value in fresh.ema_tensors().items():
        assert torch.equal(value, state[name])
    encoder.train()
    encoder.get_submodule('blocks.0').eval()

    def fail(module: nn.Module) -> None:
        assert not any(m.training for m in module.modules())
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        teacher.run(fail)
    assert (
        encoder.training
        and not encoder.get_submodule('blocks.0').training
        and encoder.get_submodule('blocks.1').training
    )
    assert isinstance(first_qkv(encoder).lora_A, nn.Parameter)


def test_forward_is_the_students_forward_without_grad() -> None:
    encoder, _ = student_pair()
    teacher = EMATeacher(encoder)
    x = torch.rand(2, 3, 28, 28)
    out = teacher(x)
    assert not out.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(out, encoder.eval()(x))


def test_swap_of_plain_attributes() -> None:
    # FSDP exposes unsharded parameters as plain attributes shadowing the
    # registered ones; the swap must replace what attribute lookup returns.
    linear = nn.Linear(2, 2, bias=False)
    shadow = torch.ones(2, 2)
    object.__setattr__(linear, 'weight_view', shadow)
    replacement = torch.zeros(2, 2)
    with swapped_tensors(linear, {'weight_view': replacement, 'weight': replacement}):
        assert linear.weight_view is replacement
        assert linear.weight is replacement
    assert linear.weight_view is shadow
    assert isinstance(linear.weight, nn.Parameter)
    with (
        pytest.raises(KeyError, match="no tensor named 'nothing'"),
        swapped_tensors(linear, {'nothing': replacement}),
    ):
        pass


def test_errors() -> None:
    with pytest.raises(ValueError, match='Linear has no trainable parameter'):
        EMATeacher(nn.Linear(2, 2).requires_grad_(False))
    teacher = EMATeacher(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r'momentum must be in \[0, 1\], got 1.5'):
        teacher.update(1.5)
