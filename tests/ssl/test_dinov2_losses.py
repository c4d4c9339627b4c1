import numpy as np
import pytest
import torch
from torch import Tensor

from explora_geo.ssl.dinov2_losses import (
    DINOv2Loss,
    dino_loss,
    ibot_loss,
    sinkhorn_knopp,
)


def reference_sinkhorn(logits: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    """DinoV2's Sinkhorn-Knopp written out with explicit loops, in float64."""
    q = np.exp(logits.astype(np.float64) / temp).T  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row] = q[row] / q[row].sum() / k
        for col in range(b):
            q[:, col] = q[:, col] / q[:, col].sum() / b
    return (q * b).T


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def logits() -> Tensor:
    torch.manual_seed(0)
    # Cosine similarities, as the head with gain 1 produces.
    return torch.rand(12, 20) * 2 - 1


class TestSinkhornKnopp:
    @pytest.mark.parametrize('iterations', [1, 3])
    def test_matches_reference_loop(self, logits: Tensor, iterations: int) -> None:
        got = sinkhorn_knopp(logits, 0.05, iterations)
        expected = reference_sinkhorn(logits.numpy(), 0.05, iterations)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)

    def test_assignments(self, logits: Tensor) -> None:
        q = sinkhorn_knopp(logits, 0.04, 3)
        assert q.shape == logits.shape
        assert q.dtype == torch.float32
        # Every sample gets a distribution over prototypes ...
        torch.testing.assert_close(q.sum(1), torch.ones(12))
        # ... and with many iterations prototypes share the samples equally.
        q = sinkhorn_knopp(logits, 0.5, 200)
        torch.testing.assert_close(
            q.sum(0), torch.full((20,), 12 / 20), rtol=1e-4, atol=1e-5
        )

    def test_differs_from_plain_softmax(self, logits: Tensor) -> None:
        # Centering: the targets are not the teacher's sharpened softmax.
        q = sinkhorn_knopp(logits, 0.04, 3)
        assert not torch.allclose(q, torch.softmax(logits / 0.04, dim=-1), atol=1e-3)

    def test_half_precision_input(self, logits: Tensor) -> None:
        q = sinkhorn_knopp(logits.bfloat16(), 0.05, 3)
        expected = reference_sinkhorn(logits.bfloat16().float().numpy(), 0.05, 3)
        np.testing.assert_allclose(q.numpy(), expected, rtol=1e-5, atol=1e-7)

    def test_no_samples(self) -> None:
        q = sinkhorn_knopp(torch.zeros(0, 8), 0.05, 3)
        assert q.shape == (0, 8)

    def test_errors(self) -> None:
        with pytest.raises(
            ValueError, match=r'\(samples, prototypes\), got shape \(2, 3, 4\)'
        ):
            sinkhorn_knopp(torch.zeros(2, 3, 4), 0.1)
        with pytest.raises(ValueError, match='teacher_temp must be > 0, got 0'):
            sinkhorn_knopp(torch.zeros(2, 3), 0)


def test_dino_loss_formula() -> None:
    torch.manual_seed(1)
    students = [torch.randn(5, 7) for _ in range(3)]
    teachers = [torch.softmax(torch.randn(5, 7), -1) for _ in range(2)]
    got = dino_loss(students, teachers, student_temp=0.1)
    expected = 0.0
    for s in students:
        lsm = log_softmax(s.double().numpy() / 0.1)
        for t in teachers:
            expected -= (t.double().numpy() * lsm).sum(-1).mean()
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_ibot_loss_formula() -> None:
    torch.manual_seed(2)
    masks = torch.zeros(4, 9, dtype=torch.bool)
    masks[0, [1, 2, 5]] = True
    masks[2, [0]] = True
    masks[3, [3, 4, 6, 7, 8]] = True  # image 1 unmasked
    m = int(masks.sum())
    student = torch.randn(m, 6)
    teacher = torch.softmax(torch.randn(m, 6), -1)
    got = ibot_loss(student, teacher, masks, student_temp=0.1)
    # Per image: mean cross-entropy over its masked tokens; then mean over images.
    ce = -(teacher.double().numpy() * log_softmax(student.double().numpy() / 0.1)).sum(
        -1
    )
    rows = masks.nonzero()[:, 0].numpy()
    per_image = [ce[rows == i].mean() if (rows == i).any() else 0.0 for i in range(4)]
    assert got.item() == pytest.approx(sum(per_image) / 4, rel=1e-5)


def test_ibot_loss_count_mismatch() -> None:
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 0] = True
    with pytest.raises(
        ValueError, match='masks select 1 tokens but got 2 student and 2 teacher rows'
    ):
        ibot_loss(torch.zeros(2, 3), torch.zeros(2, 3), masks)


def reference_koleo(x: np.ndarray, eps: float = 1e-8) -> float:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    out = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        j = max(others, key=lambda j: float(x[i] @ x[j]))
        out.append(-np.log(np.linalg.norm(x[i] - x[j] + eps) + eps))
    return float(np.mean(out))


class TestDINOv2Loss:
    def inputs(self, batch: int = 3, local: int = 2, k: int = 16, d: int = 8) -> dict:
        g = torch.Generator().manual_seed(3)
        masks = torch.rand(2 * batch, 4, generator=g) < 0.4
        m = int(masks.sum())
        return {
            'student_global_logits': torch.randn(2 * batch, k, generator=g),
            'teacher_global_probs': torch.softmax(
                torch.randn(2 * batch, k, generator=g), -1
            ),
            'student_global_cls': torch.randn(2 * batch, d, generator=g),
            'student_local_logits': torch.randn(local * batch, k, generator=g)
            if local
            else None,
            'student_patch_logits': torch.randn(m, k, generator=g),
            'teacher_patch_probs': torch.softmax(torch.randn(m, k, generator=g), -1),
            'masks': masks,
        }

    @pytest.mark.parametrize('local', [0, 2])
    def test_dinov2_weighting(self, local: int) -> None:
        x = self.inputs(local=local)
        out = DINOv2Loss(koleo_weight=0.1)(**x)
        b = 3
        t0, t1 = x['teacher_global_probs'].split(b)
        terms = 2 + max(2 * local, 1)
        # SSLMetaArch: local crops against both teacher views; each global crop
        # against the teacher's other view; KoLeo per global crop; iBOT x 2 x 1/2.
        local_loss = 0.0
        if local:
            local_loss = (
                float(dino_loss(x['student_local_logits'].chunk(local), [t0, t1]))
                / terms
            )
        s = x['student_global_logits']
        global_loss = (
            float(dino_loss([s[:b]], [t1])) + float(dino_loss([s[b:]], [t0]))
        ) / terms
        koleo = 0.1 * sum(
            reference_koleo(c.double().numpy())
            for c in x['student_global_cls'].chunk(2)
        )
        ibot = float(
            ibot_loss(x['student_patch_logits'], x['teacher_patch_probs'], x['masks'])
        )
        assert out['dino_local'].item() == pytest.approx(local_loss, rel=1e-5)
        assert out['dino_global'].item() == pytest.approx(global_loss, rel=1e-5)
        assert out['koleo'].item() == pytest.approx(koleo, rel=1e-4)
        assert out['ibot'].item() == pytest.approx(ibot, rel=1e-5)
        total = local_loss + global_loss + koleo + ibot
        assert out['loss'].item() == pytest.approx(total, rel=1e-5)

    def test_weights(self) -> None:
        x = self.inputs()
        base = DINOv2Loss()(**x)
        weighted = DINOv2Loss(dino_weight=2.0, ibot_weight=0.0, koleo_weight=0.0)(**x)
        assert weighted['dino_global'].item() == pytest.approx(
            2 * base['dino_global'].item()
        )
        assert weighted['ibot'].item() == 0.0 and weighted['koleo'].item() == 0.0

    def test_koleo_in_float32_under_autocast(self) -> None:
        x = self.inputs()
        loss = DINOv2Loss()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            mixed = loss.koleo_loss(x['student_global_cls'])
        assert mixed.dtype == torch.float32
        assert mixed.item() == loss.koleo_loss(x['student_global_cls']).item()

    def test_gradients_reach_student_only(self) -> None:
        x = self.inputs()
        x['student_global_logits'].requires_grad_(True)
        x['student_global_cls'].requires_grad_(True)
        DINOv2Loss()(**x)['loss'].backward()
        assert x['student_global_logits'].grad is not None
        assert x['student_global_cls'].grad is not None

    def test_shape_errors(self) -> None:
        x = self.inputs()
        x['teacher_global_probs'] = x['teacher_global_probs'][:4]
        with pytest.raises(
            ValueError, match=r'same shape \(2 B, K\), got \(6, 16\) and \(4, 16\)'
        ):
            DINOv2Loss()(**x)
        with pytest.raises(ValueError, match='student_temp must be > 0'):
            DINOv2Loss(student_temp=0)
        with pytest.raises(ValueError, match='loss weights must be >= 0'):
            DINOv2Loss(koleo_weight=-1)
