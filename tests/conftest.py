"""Shared fixtures: tiny ViTs so that the suite stays fast on CPU."""

import os
from typing import Any

import pytest
import timm
import torch
from torch import nn

import explora_geo  # noqa: F401  (registers the timm model names)

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY: dict[str, Any] = {'depth': 3, 'embed_dim': 32, 'num_heads': 2, 'img_size': 28}


def tiny_vit(name: str = 'explora_vitb_dino', **kwargs: Any) -> nn.Module:
    """A 3-block, 32-wide ViT of the given family."""
    return timm.create_model(name, **{**TINY, **kwargs})


@pytest.fixture
def make_vit() -> object:
    """Factory of tiny ViTs: ``make_vit(name='explora_vitb_dino', **timm_kwargs)``."""
    return tiny_vit


@pytest.fixture
def vit() -> nn.Module:
    torch.manual_seed(0)
    return tiny_vit()
