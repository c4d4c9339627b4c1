"""Forward throughput of the group-channel ViT against a plain timm ViT of equal token count.

The group-channel ViT (``explora_vitl_satmae_group``) sees a 13-band 96 x 96
Sentinel-2 image as 3 band groups x 144 patches = 432 tokens + the class token.
The baseline is timm's plain ``VisionTransformer`` with the same width, depth,
heads, patch size and MLP, on a 288 x 96 image of 4 bands (36 x 12 = 432
patches + the class token): the transformer blocks see sequences of the same
length, so any difference comes from what the group model does around them
(band selection, three patch projections, concatenated position + group
encodings).

Both models run in eval mode on the CPU at ``--precision`` (``auto``, the
default: bf16 autocast where the CPU computes bf16 natively, fp32 elsewhere),
measured alternately (to share background load fairly) after warm-up.
Reported: the fastest forward of each model (the least disturbed by other
processes) and the median over iterations of the paired ratio group / plain
(the two forwards of one iteration run back to back under similar load). The
embedding stage alone (patch projection(s) + encodings + class token, what the
grouping changes) is timed separately over many repetitions.

Usage: ``python benchmarks/group_channel_vit.py [--size b|l] [--batch 2] [--iters 3]
[--precision auto|32|bf16]``
"""

import argparse
import statistics
import time
from typing import Any, cast

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from explora_geo.models.satmae_group import GroupChannelViT  # registers the model
from explora_geo.models.satmae_vit import SatMAEViT
from explora_geo.precision import (
    PrecisionName,
    autocast,
    environment_report,
    resolve_precision,
)

from harness import add_precision_option

SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    'l': (
        'explora_vitl_satmae_group',
        {'embed_dim': 1024, 'depth': 24, 'num_heads': 16},
    ),
    'b': (
        'explora_vitb_satmae_group',
        {'embed_dim': 768, 'depth': 12, 'num_heads': 12},
    ),
}


def fill[M: nn.Module](model: M) -> M:
    """Random weights without timm's (slow) truncated-normal initialisation."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(std=0.02)
    return model.eval()


def timed_forward(
    model: VisionTransformer, x: torch.Tensor, precision: PrecisionName
) -> float:
    start = time.perf_counter()
    with torch.no_grad(), autocast(precision, 'cpu'):
        model.forward_features(x)
    return time.perf_counter() - start


def embed(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The tokens the blocks see: patch projection(s), encodings, class token."""
    if isinstance(model, SatMAEViT):
        return model.embed_tokens(x)
    return model._pos_embed(model.patch_embed(x))


def timed_embedding(
    model: VisionTransformer, x: torch.Tensor, repeats: int, precision: PrecisionName
) -> float:
    """Fastest of *repeats* runs of the embedding stage (before the blocks)."""
    best = float('inf')
    with torch.no_grad(), autocast(precision, 'cpu'):
        for _ in range(repeats):
            start = time.perf_counter()
            embed(model, x)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--size', choices=sorted(SIZES), default='b')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--embed-iters', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=1)
    add_precision_option(parser)
    args = parser.parse_args()
    precision = resolve_precision(args.precision, 'cpu')

    name, dims = SIZES[args.size]
    torch.manual_seed(0)
    group = fill(cast(GroupChannelViT, timm.create_model(name, weight_init='skip')))
    plain = fill(
        VisionTransformer(
            img_size=(288, 96),
            patch_size=8,
            in_chans=4,
            num_classes=0,
            weight_init='skip',
            **dims,
        )
    )
    x_group = torch.randn(args.batch, 13, 96, 96)
    x_plain = torch.randn(args.batch, 4, 288, 96)
    with torch.no_grad():
        tokens = (
            group.forward_features(x_group[:1]).shape[1],
            plain.forward_features(x_plain[:1]).shape[1],
        )
    assert tokens[0] == tokens[1] == 433, tokens

    times: dict[str, list[float]] = {'group': [], 'plain': []}
    for i in range(args.warmup + args.iters):
        for key, model, x in (('group', group, x_group), ('plain', plain, x_plain)):
            seconds = timed_forward(model, x, precision)
            if i >= args.warmup:
                times[key].append(seconds)

    print(environment_report(torch.get_num_threads()))
    print(f'timm {timm.__version__}')
    print(
        f'{name} vs plain timm ViT ({dims}), 433 tokens, batch {args.batch}, '
        f'precision {precision} (--precision {args.precision}), {args.iters} timed '
        f'forwards after {args.warmup} warm-up'
    )
    best = {k: min(v) for k, v in times.items()}
    for key, seconds in best.items():
        runs = ', '.join(f'{t:.2f}' for t in times[key])
        print(
            f'  {key:5s}: best {seconds:.3f} s / forward '
            f'({args.batch / seconds:.2f} images/s), median '
            f'{statistics.median(times[key]):.3f} s; runs {runs}'
        )
    paired = [g / p for g, p in zip(times['group'], times['plain'], strict=True)]
    print(f'  ratio group / plain, best forwards: {best["group"] / best["plain"]:.3f}')
    print(
        f'  ratio group / plain, median of paired runs: {statistics.median(paired):.3f}'
    )
    embed = {
        'group': timed_embedding(group, x_group, args.embed_iters, precision),
        'plain': timed_embedding(plain, x_plain, args.embed_iters, precision),
    }
    print(
        f'  embedding stage (best of {args.embed_iters}): group {embed["group"] * 1e3:.1f} ms, '
        f'plain {embed["plain"] * 1e3:.1f} ms; extra cost of the grouping = '
        f'{(embed["group"] - embed["plain"]) / best["plain"] * 100:.2f}% of a plain forward'
    )


if __name__ == '__main__':
    main()
