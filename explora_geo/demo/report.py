"""The demo's report: the results table over seeds and three figures.

.. versionadded:: 0.1
"""

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor

from ..atomic import atomic_path
from .config import CLASSES
from .data import FALSE_COLOUR, SCENE_NORMALIZATION

#: Class colours of the maps: water, dense vegetation, marsh, bare / built.
CLASS_COLOURS = ('#2b6cb0', '#1f7a34', '#b5c94c', '#c9a27e')

#: The table's measures: key in the results, title, unit.
MEASURES = (
    (
        'reconstruction_mse',
        'masked reconstruction MSE (held-out, lower is better)',
        'loss',
    ),
    ('linear_probe_accuracy', 'linear probe accuracy (held-out)', '%'),
    ('lora_finetune_accuracy', 'LoRA-r8 fine-tuning accuracy (held-out)', '%'),
)


def _fmt(value: float, unit: str) -> str:
    return f'{100 * value:.1f} %' if unit == '%' else f'{value:.4f}'


def _spread(values: Sequence[float], unit: str) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values)
    if unit == '%':
        return f'{100 * mean:.1f} ± {100 * sd:.1f} %'
    return f'{mean:.4f} ± {sd:.4f}'


def results_table(results: Mapping[str, Any]) -> str:
    """The markdown table: one column per seed, and mean ± sample SD over seeds.

    Args:
        results: Results with ``seeds`` and the :data:`MEASURES` as
            ``{model: [value per seed]}``.

    Returns:
        The table.
    """
    seeds = list(results['seeds'])
    many = len(seeds) > 1
    head = ['measure', 'model', *(f'seed {s}' for s in seeds)]
    if many:
        head.append(f'mean ± SD ({len(seeds)} seeds)')
    lines = [
        '| ' + ' | '.join(head) + ' |',
        '| --- | --- |' + ' ---: |' * (len(head) - 2),
    ]
    for key, title, unit in MEASURES:
        for model, values in results[key].items():
            cells = [title, model, *(_fmt(v, unit) for v in values)]
            if many:
                cells.append(_spread(values, unit))
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_results(results: Mapping[str, Any], output: Path) -> str:
    """Print and save the summary and table (``results.md``, ``results.json``).

    Args:
        results: Everything :func:`~explora_geo.demo.run_demo` measured.
        output: Output folder.

    Returns:
        The table.
    """
    table = results_table(results)
    seeds = results['seeds']
    summary = (
        f'ExPLoRA demo on the bundled Sentinel-2 scene: {results["chips"]["train"]} '
        f'training / {results["chips"]["test"]} held-out chips, '
        f'{results["trainable_params"]:,} values trained by ExPLoRA, Δ_T file '
        f'{results["delta_bytes"] / 1e6:.2f} MB; seed{"s" if len(seeds) > 1 else ""} '
        f'{", ".join(map(str, seeds))}; {results["seconds"]:.0f} s.'
    )
    print('\n' + summary + '\n\n' + table + '\n')
    for kind, path in results['outputs'].items():
        print(f'{kind}: {path}')
    _write_text(output / 'results.md', summary + '\n\n' + table + '\n')
    _write_text(output / 'results.json', json.dumps(results, indent=2) + '\n')
    return table


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _save(fig: Figure, path: Path, dpi: int = 120) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches='tight')
    return path


def _false_colour(chips: Tensor, lo: float, hi: float) -> np.ndarray:
    idx = [SCENE_NORMALIZATION.bands.index(b) for b in FALSE_COLOUR]
    image = ((chips[:, idx] - lo) / (hi - lo)).clamp(0, 1)
    return image.permute(0, 2, 3, 1).numpy()


def plot_reconstructions(
    chips: Tensor,
    labels: Sequence[int],
    mask: Tensor,
    before: Tensor,
    after: Tensor,
    errors: tuple[Sequence[float], Sequence[float]],
    path: Path,
) -> Path:
    """Figure (a): held-out chips, the MAE mask, reconstructions before and after ExPLoRA.

    Args:
        chips: ``(N, 13, H, W)`` model input.
        labels: Each chip's class.
        mask: ``(N, H, W)`` 1 where the false-colour bands' patches were removed.
        before: Reconstructions of the MAE before ExPLoRA.
        after: Reconstructions after ExPLoRA.
        errors: Per-chip masked MSE of the false-colour group, before and after.
        path: PNG to write.

    Returns:
        *path*.
    """
    idx = [SCENE_NORMALIZATION.bands.index(b) for b in FALSE_COLOUR]
    lo, hi = np.percentile(chips[:, idx].numpy(), [1, 99])
    inputs = _false_colour(chips, lo, hi)
    shown = inputs.copy()
    shown[mask.numpy().astype(bool)] = 0.5
    columns = [
        ('input (B8, B4, B3)', inputs),
        ('75 % of patches removed', shown),
        ('before ExPLoRA', _false_colour(before, lo, hi)),
        ('after ExPLoRA', _false_colour(after, lo, hi)),
    ]
    n = len(chips)
    fig = Figure(figsize=(7.6, 2.0 * n))
    axes = fig.subplots(n, 4, squeeze=False)
    for row in range(n):
        for col, (title, images) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(images[row], interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 2:
                ax.set_xlabel(f'MSE {errors[0][row]:.4f}', fontsize=8)
            if col == 3:
                ax.set_xlabel(f'MSE {errors[1][row]:.4f}', fontsize=8)
        axes[row, 0].set_ylabel(CLASSES[labels[row]], fontsize=8)
    fig.suptitle(
        'Held-out Sentinel-2 chips (320 m), false colour: masked reconstruction by the\n'
        'MAE before and after ExPLoRA (MSE: removed patches of the B2-B4 + B8 group, input in [0, 1])',
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


def read_map(path: Path) -> np.ndarray:
    """The class map written by the prediction stage, as ``(rows, cols)`` int64."""
    with rasterio.open(path) as src:
        return src.read(1).astype(np.int64)


def plot_maps(
    rgb: Tensor,
    labels: np.ndarray,
    maps: Mapping[str, np.ndarray],
    held_out: np.ndarray,
    blocks: Sequence[tuple[int, int, int]],
    stride: int,
    chip: int,
    path: Path,
) -> Path:
    """Figure (b): the land-cover map, labels vs predictions, held-out blocks outlined.

    The whole scene is drawn; cells whose chip overlaps the training area are
    faded, and the agreement with the labels is counted over the held-out
    cells only.

    Args:
        rgb: ``(3, H, W)`` natural colour of the scene in [0, 1].
        labels: ``(rows, cols)`` index-derived class of each map cell.
        maps: Predicted maps of the same shape, by model.
        held_out: ``(rows, cols)`` True where the cell's chip lies in the
            held-out blocks.
        blocks: The held-out blocks as ``(row, col, size)`` in pixels.
        stride: Input pixels per map cell.
        chip: Chip size (a cell is the centre of its chip).
        path: PNG to write.

    Returns:
        *path*.
    """
    cmap = ListedColormap(CLASS_COLOURS)
    rows, cols = labels.shape
    height, width = rgb.shape[1:]
    # Cell (r, c) is the centre of the chip starting at (r, c) * stride.
    offset = (chip - stride) / 2
    extent = (offset, offset + cols * stride, offset + rows * stride, offset)
    panels = [('labels from NDWI / NDVI\n', labels), *maps.items()]
    fig = Figure(figsize=(9.6, 10.8), layout='constrained')
    axes = fig.subplots(2, 2).ravel()
    axes[0].imshow(rgb.permute(1, 2, 0).numpy(), extent=(0, width, height, 0))
    axes[0].set_title('scene, natural colour (B4, B3, B2)\n', fontsize=10)
    for ax, (name, values) in zip(axes[1:], panels, strict=True):
        style = {
            'cmap': cmap,
            'vmin': -0.5,
            'vmax': len(CLASSES) - 0.5,
            'extent': extent,
            'interpolation': 'nearest',
        }
        ax.imshow(values, alpha=0.4, **style)
        ax.imshow(np.ma.masked_where(~held_out, values), **style)
        title = name
        if values is not labels:
            agree = float((values[held_out] == labels[held_out]).mean())
            title += f'\n{100 * agree:.1f} % of held-out cells agree with the labels'
        ax.set_title(title, fontsize=10)
    for ax in axes:
        for y, x, size in blocks:
            ax.add_patch(
                Rectangle((x, y), size, size, fill=False, lw=1.2, edgecolor='black')
            )
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(
        handles=[
            Patch(color=c, label=n) for c, n in zip(CLASS_COLOURS, CLASSES, strict=True)
        ],
        loc='outside lower center',
        ncol=len(CLASSES),
        fontsize=9,
        frameon=False,
    )
    fig.suptitle(
        f'Land cover of the scene ({width * 10 / 1000:.1f} km), one cell per {chip} px '
        f'chip every {stride} px ({stride * 10} m). Outlined: held-out blocks, never\n'
        'seen in pre-training or fine-tuning; faded: cells whose chip overlaps the '
        'training area. Predictions: LoRA-fine-tuned classifiers',
        fontsize=10,
    )
    return _save(fig, path, dpi=90)


def plot_summary(results: Mapping[str, Any], path: Path) -> Path:
    """Figure (c): the table as dots (one per seed) and means, on labelled axes.

    Dots rather than bars: a dot's position carries the value, so an accuracy
    axis that starts above zero misleads no one (its range is printed in the
    axis label); the reconstruction error starts at zero.

    Args:
        results: The results (see :func:`results_table`).
        path: PNG to write.

    Returns:
        *path*.
    """
    seeds = results['seeds']
    sizes = [len(results[key]) for key, _, _ in MEASURES]
    fig = Figure(figsize=(8.6, 1.2 + 0.42 * sum(sizes) + 0.9 * len(sizes)))
    axes = fig.subplots(len(MEASURES), 1, gridspec_kw={'height_ratios': sizes})
    for ax, (key, title, unit) in zip(axes, MEASURES, strict=True):
        data = results[key]
        names = list(data)
        scale = 100 if unit == '%' else 1
        values = [np.asarray(data[n], dtype=float) * scale for n in names]
        digits = 1 if unit == '%' else 3
        for i, v in enumerate(values):
            y = len(names) - 1 - i
            ax.scatter(v, np.full(len(v), y), s=22, color='#888888', zorder=3)
            ax.plot([v.mean()], [y], marker='|', markersize=18, mew=3, color='#d9480f')
            spread = f' ± {v.std(ddof=1):.{digits}f}' if len(v) > 1 else ''
            ax.text(
                1.02,
                y,
                f'{v.mean():.{digits}f}{spread}',
                transform=ax.get_yaxis_transform(),
                va='center',
                fontsize=9,
                color='#d9480f',
            )
        ax.set_yticks(range(len(names)), list(reversed(names)), fontsize=9)
        ax.set_ylim(-0.6, len(names) - 0.4)
        every = np.concatenate(values)
        if unit == '%':
            lo = max(0.0, 10 * np.floor((every.min() - 3) / 10))
            ax.set_xlim(lo, 100)
            ax.set_xlabel(f'accuracy, % (axis from {lo:.0f} to 100)', fontsize=9)
        else:
            ax.set_xlim(0, 1.12 * every.max())
            ax.set_xlabel(
                'mean squared error of removed patches (norm-pix)', fontsize=9
            )
        ax.grid(axis='x', color='#e5e5e5', zorder=0)
        ax.set_title(title, fontsize=10, loc='left')
        ax.tick_params(axis='x', labelsize=9)
    many = len(seeds) > 1
    fig.suptitle(
        f'Grey dots: seeds {", ".join(map(str, seeds))}; orange: mean (± SD on the right)'
        if many
        else f'One run (seed {seeds[0]}); run with --seeds 3 for the spread',
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)
