"""The demo pipeline end to end on the bundled scene, on its short schedule."""

import json

import numpy as np
import pytest
import torch

from explora_geo.demo import (
    CLASSES,
    ChipGrid,
    land_cover_labels,
    read_scene,
    run_demo,
    scene_path,
)
from explora_geo.models import create_model


def test_land_cover_rules() -> None:
    scene = np.zeros((13, 1, 4), dtype=np.float32)
    # B3, B4, B8 per pixel: water, dense vegetation, marsh, bare.
    scene[2] = [1000, 800, 900, 1500]
    scene[3] = [600, 300, 700, 1500]
    scene[7] = [300, 2500, 1200, 1700]
    assert land_cover_labels(scene).tolist() == [[0, 1, 2, 3]]


def test_split_is_spatially_disjoint() -> None:
    grid = ChipGrid(read_scene(scene_path()), chip=32)
    positions = grid.train_positions()
    held = grid.test_mask
    for y, x in positions[torch.randperm(len(positions))[:500]].tolist():
        assert not held[y : y + 32, x : x + 32].any()
    # Every held-out chip lies inside held-out blocks.
    for (y, x), test in zip(grid.cells, grid.is_test.tolist(), strict=True):
        assert bool(held[y : y + 32, x : x + 32].all()) == test
    assert 0.2 < grid.is_test.float().mean() < 0.3
    # The held-out chips see more than one class.
    assert len(grid.split_labels('test').unique()) >= 3


@pytest.mark.slow
def test_demo_fast(tmp_path) -> None:
    results = run_demo(output=tmp_path, fast=True, seed=0)
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['chips'] == results['chips']
    for key in ('comparison.png', 'results.md', 'source_mae.pth'):
        assert (tmp_path / key).is_file()
    recon = results['reconstruction_mse']
    assert recon['after ExPLoRA'] < recon['before ExPLoRA (W_S, new patch embeddings)']
    for table in ('linear_probe_accuracy', 'lora_finetune_accuracy'):
        assert all(0 <= v <= 1 for v in results[table].values())
    # The exported merged encoder loads by path.
    model = create_model(
        'explora_vitb_satmae_group',
        weights=results['outputs']['merged_encoder'],
        num_classes=len(CLASSES),
        in_chans=13,
        img_size=32,
        patch_size=8,
        embed_dim=128,
        depth=2,
        num_heads=4,
        channel_embed_dim=32,
    )
    assert model(torch.rand(1, 13, 32, 32)).shape == (1, len(CLASSES))
