"""Per-iteration schedules of the DinoV2 objective (teacher momentum and temperature).

DinoV2 precomputes every schedule as an array of ``total`` values: an optional
linear warm-up (``numpy.linspace(start, base, warmup)``, both ends included)
followed by a half cosine from ``base`` to ``final`` over the remaining
iterations, and ``final`` from ``total`` on. :func:`cosine_schedule` returns the
same value for one iteration in closed form.

lightly's ``cosine_schedule`` divides the cosine phase by ``max_steps - 1``
(it reaches the final value one step earlier), so it is not used here.

.. versionadded:: 0.1
"""

import math


def cosine_schedule(
    step: int,
    total_steps: int,
    base_value: float,
    final_value: float,
    warmup_steps: int = 0,
    warmup_start_value: float = 0.0,
) -> float:
    """Value of a DinoV2 warm-up + cosine schedule at one iteration.

    Args:
        step: Iteration (0-based optimiser step).
        total_steps: Length of the schedule; from here on the value is
            *final_value*.
        base_value: Value at the end of the warm-up (start of the cosine).
        final_value: Value the cosine decays (or grows) to.
        warmup_steps: Iterations of linear warm-up from *warmup_start_value*
            to *base_value* (both ends included, as ``numpy.linspace``).
        warmup_start_value: First value of the warm-up.

    Returns:
        The scheduled value.

    Raises:
        ValueError: If *step* is negative or *warmup_steps* exceeds *total_steps*.
    """
    if step < 0:
        raise ValueError(f'step must be >= 0, got {step}')
    if not 0 <= warmup_steps <= max(total_steps, 0):
        raise ValueError(
            f'warmup_steps ({warmup_steps}) must be in [0, total_steps={total_steps}]'
        )
    if step >= total_steps:
        return float(final_value)
    if step < warmup_steps:
        if warmup_steps == 1:
            return float(warmup_start_value)
        frac = step / (warmup_steps - 1)
        return float(warmup_start_value + (base_value - warmup_start_value) * frac)
    i = step - warmup_steps
    n = total_steps - warmup_steps
    return float(
        final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / n))
    )
