"""Flat test overrides routed into the grouped arguments of the pre-training tasks."""

import dataclasses
from typing import Any

from explora_geo.adapter import ExPLoRAConfig
from explora_geo.tasks.pretraining import OptimizationConfig


def grouped(
    flat: dict[str, Any],
    adapter: ExPLoRAConfig,
    optimization: OptimizationConfig,
    objective: Any,
) -> dict[str, Any]:
    """Task arguments from *flat*: fields of the three configs go into them."""
    out: dict[str, Any] = {}
    changes: dict[str, dict[str, Any]] = {
        'adapter': {},
        'optimization': {},
        'objective': {},
    }
    bases = {'adapter': adapter, 'optimization': optimization, 'objective': objective}
    names = {k: {f.name for f in dataclasses.fields(v)} for k, v in bases.items()}
    for key, value in flat.items():
        group = next((g for g, fields in names.items() if key in fields), None)
        if group is None:
            out[key] = value
        else:
            changes[group][key] = value
    for group, base in bases.items():
        out[group] = dataclasses.replace(base, **changes[group])
    return out
