import numpy as np
import pytest

from explora_geo.ssl.schedules import cosine_schedule


def dinov2_schedule(
    base: float, final: float, total: int, warmup: int = 0, start: float = 0.0
) -> np.ndarray:
    """DinoV2's precomputed schedule array (warm-up linspace, then half cosine)."""
    warm = np.linspace(start, base, warmup)
    iters = np.arange(total - warmup)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, cos))


@pytest.mark.parametrize(
    ('base', 'final', 'total', 'warmup', 'start'),
    [
        (0.994, 1.0, 50, 0, 0.0),  # teacher momentum
        (1e-3, 1e-6, 40, 7, 0.0),  # learning rate
        (0.5, 0.5, 13, 1, 0.1),
    ],
)
def test_matches_dinov2_arrays(
    base: float, final: float, total: int, warmup: int, start: float
) -> None:
    expected = dinov2_schedule(base, final, total, warmup, start)
    got = [cosine_schedule(i, total, base, final, warmup, start) for i in range(total)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    # From the end of the schedule on, the final value.
    assert cosine_schedule(total, total, base, final, warmup, start) == final
    assert cosine_schedule(10 * total, total, base, final, warmup, start) == final


def test_teacher_temperature_warmup_then_constant() -> None:
    # The DinoV2 teacher temperature: total == warmup, base == final.
    values = [cosine_schedule(i, 5, 0.07, 0.07, 5, 0.04) for i in range(8)]
    np.testing.assert_allclose(
        values, [0.04, 0.0475, 0.055, 0.0625, 0.07, 0.07, 0.07, 0.07]
    )
    assert cosine_schedule(0, 0, 0.07, 0.07, 0, 0.04) == 0.07


def test_momentum_endpoints() -> None:
    assert cosine_schedule(0, 100, 0.994, 1.0) == pytest.approx(0.994)
    assert cosine_schedule(50, 100, 0.994, 1.0) == pytest.approx(0.997)
    assert cosine_schedule(99, 100, 0.994, 1.0) < 1.0


def test_errors() -> None:
    with pytest.raises(ValueError, match='step must be >= 0, got -1'):
        cosine_schedule(-1, 10, 1.0, 0.0)
    with pytest.raises(
        ValueError, match=r'warmup_steps \(11\) must be in \[0, total_steps=10\]'
    ):
        cosine_schedule(0, 10, 1.0, 0.0, warmup_steps=11)
