"""``run_demo``: the five stages, over one or more seeds, and the report.

.. versionadded:: 0.1
"""

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..atomic import write_atomic
from ..models.weights import create_model, get_weight
from .config import CLASSES, DemoConfig
from .data import RGB_NORMALIZATION, ChipGrid, majority_labels, read_scene, scene_path
from .report import (
    plot_maps,
    plot_reconstructions,
    plot_summary,
    read_map,
    write_results,
)
from .source import SOURCE_MODEL, pretrain_source
from .stages import (
    Architecture,
    Pretrained,
    accuracy,
    features,
    finetune,
    linear_probe,
    predict_scene,
    pretrain_explora,
    quiet_lightning,
    reconstruct,
    reconstruction_error,
)


def architecture(
    config: DemoConfig, weights: str | None, output: Path, seed: int
) -> Architecture:
    """The demo's models: its own small source MAE, or released weights at full size.

    Args:
        config: Demo sizes.
        weights: Released source MAE weights (enum name or path), or ``None``
            to pre-train the small source MAE (stage 1).
        output: Output folder (for the source checkpoint).
        seed: Seed of the source MAE.

    Returns:
        The models to build.

    Raises:
        ValueError: If *weights* is neither a file nor a known weights name.
    """
    if weights is None:
        source = pretrain_source(config, output / 'source_mae.pth', seed)
        return Architecture(
            source_weights=str(source),
            source_label='demo RGB source MAE',
            group_model='explora_vitb_satmae_group',
            rgb_model=SOURCE_MODEL,
            img_size=config.chip,
            group_kwargs=config.group_kwargs(),
            decoder_kwargs=config.group_decoder_kwargs(),
            rgb_kwargs=config.encoder_kwargs(),
        )
    if not Path(weights).exists():
        get_weight(weights)  # fails early, naming the known weights
    print(f'1/5 source MAE: {weights}')
    return Architecture(
        source_weights=weights,
        source_label=weights,
        group_model='explora_vitl_satmae_group',
        rgb_model='explora_vitl_mae',
        img_size=config.chip,
    )


def run_demo(
    output: Path = Path('outputs/demo'),
    weights: str | None = None,
    fast: bool = False,
    seed: int = 0,
    seeds: int = 1,
    config: DemoConfig | None = None,
) -> dict[str, Any]:
    """Run the demo and write its outputs.

    Stage 1 (the source model) runs once; stages 2-4 run once per seed
    (``seed``, ``seed + 1``, ...), and the table gives every seed and, for
    several, the mean and sample standard deviation. Stage 5 and the figures
    use the first seed's models. The same call on the same machine gives the
    same numbers.

    Args:
        output: Output folder.
        weights: Source MAE weights (enum name or path); default: pre-train the
            small source MAE on the bundled RGB photographs.
        fast: A short schedule that exercises every stage (:meth:`DemoConfig.fast`).
        seed: First random seed.
        seeds: Number of seeds.
        config: Sizes and schedule (overrides *fast*).

    Returns:
        The results (also written to ``results.json``).

    Raises:
        ValueError: If *seeds* is below 1.
    """
    if seeds < 1:
        raise ValueError(f'seeds must be >= 1, got {seeds}')
    start = time.perf_counter()
    config = config or (DemoConfig.fast() if fast else DemoConfig())
    output.mkdir(parents=True, exist_ok=True)
    scene = read_scene(scene_path())
    grid = ChipGrid(scene, config.chip)
    arch = architecture(config, weights, output, seed)
    seed_list = [seed + i for i in range(seeds)]
    runs = []
    with quiet_lightning():
        for i, s in enumerate(seed_list):
            tag = f' [seed {i + 1}/{seeds}]' if seeds > 1 else ''
            runs.append(_run_seed(config, arch, grid, output / f'seed{s}', s, tag))
        first = runs[0]
        print('5/5 land-cover map of the whole scene with the fine-tuned classifiers')
        product = predict_scene(
            first['classifier'],
            scene_path(),
            output / 'landcover.tif',
            config.map_stride,
            vectors=output / 'landcover.gpkg',
        )
        baseline = predict_scene(
            first['source_classifier'],
            scene_path(),
            output / 'landcover_source.tif',
            config.map_stride,
        )
    measures = ('reconstruction_mse', 'linear_probe_accuracy', 'lora_finetune_accuracy')
    results: dict[str, Any] = {
        'config': asdict(config),
        'source_weights': arch.source_label,
        'seeds': seed_list,
        'chips': {
            'train': int((~grid.is_test).sum()),
            'test': int(grid.is_test.sum()),
        },
        'test_class_counts': {
            c: int((grid.split_labels('test') == i).sum())
            for i, c in enumerate(CLASSES)
        },
        'trainable_params': first['trainable_params'],
        'delta_bytes': first['delta_bytes'],
    }
    for key in measures:
        results[key] = {
            model: [run[key][model] for run in runs] for model in first[key]
        }
    figures = _figures(config, grid, first, seed, product.path, baseline.path, output)
    results['map_agreement'] = figures.pop('agreement')
    figures['figure: summary'] = str(plot_summary(results, output / 'summary.png'))
    results['outputs'] = {
        'merged_encoder': str(first['pretrained'].encoder_ckpt),
        'delta': str(first['pretrained'].delta),
        'classifier (explora-geo predict CKPT)': str(first['classifier']),
        'land-cover map (COG)': str(product.path),
        'land-cover polygons (GeoPackage)': str(product.vector_path),
        **figures,
        'table': str(output / 'results.md'),
    }
    results['seconds'] = round(time.perf_counter() - start, 1)
    write_results(results, output)
    return results


def _run_seed(
    config: DemoConfig,
    arch: Architecture,
    grid: ChipGrid,
    output: Path,
    seed: int,
    tag: str,
) -> dict[str, Any]:
    """Stages 2-4 for one seed."""
    pretrained = pretrain_explora(config, arch, grid, output, seed, f'2/5{tag}')
    print(f'3/5{tag} comparing source and ExPLoRA representations on held-out chips')
    train_ms = grid.stack(grid.normalized, 'train')
    test_ms = grid.stack(grid.normalized, 'test')
    train_y, test_y = grid.split_labels('train'), grid.split_labels('test')
    train_rgb = RGB_NORMALIZATION(grid.stack(grid.rgb, 'train'))
    test_rgb = RGB_NORMALIZATION(grid.stack(grid.rgb, 'test'))
    rgb_encoder = create_model(
        arch.rgb_model,
        weights=arch.source_weights,
        num_classes=0,
        img_size=arch.img_size,
        **arch.rgb_kwargs,
    )
    merged = create_model(
        arch.group_model,
        weights=str(pretrained.encoder_ckpt),
        num_classes=0,
        in_chans=grid.normalized.shape[0],
        img_size=arch.img_size,
        **arch.group_kwargs,
    )
    initial = pretrained.initial

    def probe(
        encoder: torch.nn.Module, train: torch.Tensor, test: torch.Tensor
    ) -> float:
        return linear_probe(
            features(encoder, train), train_y, features(encoder, test), test_y, seed
        )

    majority = float(
        (test_y == train_y.bincount(minlength=len(CLASSES)).argmax()).float().mean()
    )
    run: dict[str, Any] = {
        'pretrained': pretrained,
        'trainable_params': int(
            sum(p.numel() for p in pretrained.task.parameters() if p.requires_grad)
        ),
        'delta_bytes': pretrained.delta.stat().st_size,
        'reconstruction_mse': {
            'before ExPLoRA (W_S, new patch embeddings)': reconstruction_error(
                initial, test_ms, seed
            ),
            'after ExPLoRA': reconstruction_error(pretrained.task.model, test_ms, seed),
        },
        'linear_probe_accuracy': {
            'majority class': majority,
            'source MAE on RGB (B4,B3,B2)': probe(rgb_encoder, train_rgb, test_rgb),
            'source blocks on 10 bands (before ExPLoRA)': probe(
                initial.encoder, train_ms, test_ms
            ),
            'ExPLoRA merged encoder on 10 bands': probe(merged, train_ms, test_ms),
        },
    }
    print(f'4/5{tag} LoRA-r{config.finetune_rank} fine-tuning on the land-cover labels')
    initial_ckpt = output / 'initial_encoder.safetensors'
    _save_encoder(initial.encoder, initial_ckpt)
    source_ft = finetune(
        str(initial_ckpt),
        config,
        arch,
        (train_ms, train_y),
        output / 'classifier_source.ckpt',
        seed,
    )
    explora_ft = finetune(
        str(pretrained.encoder_ckpt),
        config,
        arch,
        (train_ms, train_y),
        output / 'classifier.ckpt',
        seed,
    )
    run['lora_finetune_accuracy'] = {
        'source blocks (before ExPLoRA)': accuracy(source_ft, test_ms, test_y),
        'ExPLoRA merged encoder': accuracy(explora_ft, test_ms, test_y),
    }
    run['classifier'] = output / 'classifier.ckpt'
    run['source_classifier'] = output / 'classifier_source.ckpt'
    return run


def _save_encoder(encoder: torch.nn.Module, path: Path) -> None:
    """The encoder before ExPLoRA as a safetensors state dict (``weights=<path>``)."""
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, tmp))


def _figures(
    config: DemoConfig,
    grid: ChipGrid,
    run: dict[str, Any],
    seed: int,
    product: Path,
    baseline: Path,
    output: Path,
) -> dict[str, Any]:
    """The three figures; returns their paths and the maps' agreement with the labels."""
    pretrained: Pretrained = run['pretrained']
    # (a) One held-out chip per class: the purest of its class.
    test_cells = grid.split_cells('test')
    test_y = grid.split_labels('test')
    chips = grid.stack(grid.normalized, 'test')
    picks = []
    for c in range(len(CLASSES)):
        idx = torch.nonzero(test_y == c).flatten().tolist()
        if not idx:
            continue
        purity = [
            float(
                (grid.pixel_labels[y : y + grid.chip, x : x + grid.chip] == c)
                .float()
                .mean()
            )
            for y, x in (test_cells[i] for i in idx)
        ]
        picks.append(idx[int(np.argmax(purity))])
    sample = chips[picks]
    before, mask = reconstruct(pretrained.initial, sample, seed)
    after, _ = reconstruct(pretrained.task.model, sample, seed)
    group0 = mask[:, 0]

    def errors(images: torch.Tensor) -> list[float]:
        diff = (images - sample).pow(2).mean(1)
        return [
            float((d * m).sum() / m.sum().clamp(min=1))
            for d, m in zip(diff, group0, strict=True)
        ]

    paths: dict[str, Any] = {}
    paths['figure: reconstructions'] = str(
        plot_reconstructions(
            sample,
            [int(test_y[i]) for i in picks],
            group0,
            before,
            after,
            (errors(before), errors(after)),
            output / 'reconstructions.png',
        )
    )
    # (b) Maps of the held-out blocks.
    stride = config.map_stride
    labels = majority_labels(grid.pixel_labels, config.chip, stride).numpy()
    held = (
        F.avg_pool2d(grid.test_mask.float()[None, None], config.chip, stride)[0, 0] == 1
    ).numpy()
    maps = {
        'source blocks, fine-tuned': read_map(baseline),
        'ExPLoRA, fine-tuned': read_map(product),
    }
    rows = min(labels.shape[0], *(m.shape[0] for m in maps.values()))
    cols = min(labels.shape[1], *(m.shape[1] for m in maps.values()))
    labels, held = labels[:rows, :cols], held[:rows, :cols]
    maps = {k: v[:rows, :cols] for k, v in maps.items()}
    paths['figure: land-cover maps'] = str(
        plot_maps(
            grid.rgb,
            labels,
            maps,
            held,
            grid.held_out_blocks(),
            stride,
            config.chip,
            output / 'landcover.png',
        )
    )
    paths['agreement'] = {
        k: float((v[held] == labels[held]).mean()) for k, v in maps.items()
    }
    return paths
