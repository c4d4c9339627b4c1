"""Training step of the ExPLoRA-adapted ViT vs HF peft, a plain-PyTorch LoRA and full fine-tuning.

Every variant trains the same tensors as D-[L]-r64 (last block unfrozen, LoRA
on the other blocks, norms and class token), except full fine-tuning:

* ``explora``: :class:`explora_geo.adapter.QKVLoRA` (Q and V slices of the fused qkv).
* ``peft``: HF peft ``LoraConfig`` on each frozen block's ``attn.qkv`` (peft can
  only adapt whole modules, so it adapts Q, K and V with one factor pair; the
  parameter count is the same, 4 r D per block).
* ``naive``: plain PyTorch, two independent ``nn.Linear`` LoRA branches per
  block padded into the qkv output.
* ``full``: full fine-tuning of the same ViT.

Each variant runs in a fresh process (peak RSS is per process). One ``qkv``
layer alone (ExPLoRA's vs peft's, timed alternately in one process) gives a
speed ratio that load from other jobs distorts less. Reported: step
time (forward + backward + AdamW step), peak RSS above the process's RSS after
building the model, the bytes of the activations autograd saves for the
backward pass (distinct storages other than parameters, counted with
``torch.autograd.graph.saved_tensors_hooks`` in the first step: exact, unlike
RSS), and merged-model inference time against plain timm, with
the precision used and the machine's bf16-relevant ISA flags and versions.

``--precision auto`` (the default) runs bf16 autocast where the CPU computes
bf16 natively and fp32 elsewhere (:mod:`explora_geo.precision`).

Usage: ``python benchmarks/lora_adapter.py [--model explora_vitb_dino] [--batch 8]
[--precision auto|32|bf16]``
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, cast

import psutil
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import explora_geo  # noqa: F401
from explora_geo.adapter import (
    ExPLoRAConfig,
    QKVLoRA,
    apply_explora,
    count_trainable_parameters,
    merge_and_unload,
)
from explora_geo.precision import autocast, environment_report, resolve_precision

from harness import add_precision_option


class NaiveQVLoRA(nn.Module):
    """Reference LoRA: separate q and v branches, zero-padded into the qkv output."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        d = base.in_features
        self.q_a, self.q_b = (
            nn.Linear(d, rank, bias=False),
            nn.Linear(rank, d, bias=False),
        )
        self.v_a, self.v_b = (
            nn.Linear(d, rank, bias=False),
            nn.Linear(rank, d, bias=False),
        )
        nn.init.zeros_(self.q_b.weight)
        nn.init.zeros_(self.v_b.weight)
        self.scaling = 1.0 / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dq = self.q_b(self.q_a(x)) * self.scaling
        dv = self.v_b(self.v_a(x)) * self.scaling
        return self.base(x) + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def build(variant: str, model_name: str, rank: int, img: int) -> nn.Module:
    model = cast(
        VisionTransformer, timm.create_model(model_name, num_classes=0, img_size=img)
    )
    if variant == 'full':
        return model
    config = ExPLoRAConfig(unfrozen_blocks=(-1,), rank=rank)
    if variant == 'explora':
        return apply_explora(model, config)
    if variant == 'naive':
        apply_explora(model, ExPLoRAConfig(unfrozen_blocks=(-1,), rank=0))
        for block in model.blocks[:-1]:
            attn = block.get_submodule('attn')
            qkv = attn.get_submodule('qkv')
            assert isinstance(qkv, nn.Linear)
            attn.qkv = NaiveQVLoRA(qkv, rank)
        return model
    if variant == 'peft':
        from peft import LoraConfig, inject_adapter_in_model

        depth = len(model.blocks)
        targets = [f'blocks.{i}.attn.qkv' for i in range(depth - 1)]
        adapted = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=1, target_modules=targets), model
        )
        for name, param in adapted.named_parameters():
            param.requires_grad = (
                'lora_' in name
                or name.startswith(f'blocks.{depth - 1}.')
                or 'norm' in name
                or name == 'cls_token'
            )
        return adapted
    raise ValueError(variant)


def rss() -> int:
    return psutil.Process().memory_info().rss


def run_variant(variant: str, args: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args['threads'])
    model = build(variant, args['model'], args['rank'], args['img'])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args['batch'], 3, args['img'], args['img'])
    before = rss()
    times = []
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    for i in range(args['warmup'] + args['steps']):
        start = time.perf_counter()
        hooks = (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
            if i == 0
            else contextlib.nullcontext()
        )
        with hooks, autocast(args['resolved_precision'], 'cpu'):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args['warmup']:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        'variant': variant,
        'trainable': sum(p.numel() for p in params),
        'step_s': statistics.median(times),
        'peak_above_model_mb': (peak - before) / 2**20 if peak > before else 0.0,
        'peak_rss_mb': peak / 2**20,
        'saved_activations_mb': sum(saved.values()) / 2**20,
    }
    if variant == 'explora':
        result['trainable'] = count_trainable_parameters(model)
        result['inference'] = inference_ratio(model, args)
    return result


def inference_ratio(model: nn.Module, args: dict[str, Any]) -> dict[str, float]:
    merged = merge_and_unload(model).eval()
    plain = timm.create_model(args['model'], num_classes=0, img_size=args['img']).eval()
    plain.load_state_dict(merged.state_dict())
    x = torch.randn(args['batch'], 3, args['img'], args['img'])

    def timed(m: nn.Module) -> float:
        out = []
        with torch.inference_mode(), autocast(args['resolved_precision'], 'cpu'):
            for _ in range(args['warmup']):
                m(x)
            for _ in range(args['steps']):
                start = time.perf_counter()
                m(x)
                out.append(time.perf_counter() - start)
        return statistics.median(out)

    # Interleave to spread machine noise over both.
    t_merged, t_plain = [], []
    for _ in range(2):
        t_merged.append(timed(merged))
        t_plain.append(timed(plain))
    return {'merged_s': min(t_merged), 'plain_timm_s': min(t_plain)}


def layer_comparison(args: dict[str, Any], repeats: int = 12) -> dict[str, float]:
    """One ``qkv`` layer alone: ExPLoRA's QKVLoRA vs peft's LoRA, interleaved.

    Forward + backward of the layer of the benchmarked ViT on a batch of its
    tokens, timed alternately (so that other load hits both alike); median
    after two warm-up rounds. Also the saved activation bytes of each.
    """
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device('meta'):
        vit = cast(
            VisionTransformer,
            timm.create_model(args['model'], num_classes=0, img_size=args['img']),
        )
    dim = vit.embed_dim
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    torch.manual_seed(0)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.qkv(x)

    peft_layer = inject_adapter_in_model(
        LoraConfig(r=args['rank'], lora_alpha=1, target_modules=['qkv']), Attention()
    )
    peft_layer.get_submodule('qkv.base_layer').requires_grad_(False)
    base = nn.Linear(dim, 3 * dim).requires_grad_(False)
    layers = {'explora': QKVLoRA(base, args['rank']), 'peft': peft_layer}
    x = torch.randn(args['batch'], tokens, dim, requires_grad=True)
    grad = torch.randn(args['batch'], tokens, 3 * dim)
    times: dict[str, list[float]] = {name: [] for name in layers}
    saved: dict[str, int] = {}
    for i in range(repeats + 2):
        for name, layer in layers.items():
            storages: dict[int, int] = {}
            frozen = {p.untyped_storage().data_ptr() for p in layer.parameters()}

            def pack(
                t: torch.Tensor,
                storages: dict[int, int] = storages,
                frozen: set[int] = frozen,
            ) -> torch.Tensor:
                storage = t.untyped_storage()
                if storage.data_ptr() not in frozen:
                    storages[storage.data_ptr()] = storage.nbytes()
                return t

            start = time.perf_counter()
            with (
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
                autocast(args['resolved_precision'], 'cpu'),
            ):
                out = layer(x)
            out.backward(grad.to(out.dtype))
            if i >= 2:
                times[name].append(time.perf_counter() - start)
            saved[name] = sum(storages.values())
    return {
        **{f'{n}_ms': statistics.median(t) * 1e3 for n, t in times.items()},
        **{f'{n}_saved_mb': b / 2**20 for n, b in saved.items()},
        'dim': dim,
        'tokens': args['batch'] * tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='explora_vitb_dino')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--img', type=int, default=224)
    parser.add_argument('--rank', type=int, default=64)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--variants', default='explora,peft,naive,full')
    add_precision_option(parser)
    args = vars(parser.parse_args())
    args['resolved_precision'] = resolve_precision(args['precision'], 'cpu')
    ctx = mp.get_context('spawn')
    results = []
    for variant in args['variants'].split(','):
        # A fresh process per variant, so that peak RSS is the variant's own.
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results.append(pool.submit(run_variant, variant, args).result())
    import peft

    print(environment_report(args['threads']))
    print(
        f'# {args["model"]}, batch {args["batch"]}, {args["img"]} px, rank {args["rank"]}, '
        f'precision {args["resolved_precision"]} (--precision {args["precision"]}), '
        f'{args["threads"]} threads; timm {timm.__version__}, peft {peft.__version__}'
    )
    ref = next(r for r in results if r['variant'] == 'explora')
    print(
        '| variant | trainable | step (s) | step vs ExPLoRA | saved activations (MB) '
        '| peak above model (MB) | peak RSS (MB) |'
    )
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for r in results:
        print(
            f'| {r["variant"]} | {r["trainable"] / 1e6:.2f}M | {r["step_s"]:.3f} | '
            f'{r["step_s"] / ref["step_s"]:.2f}x | {r["saved_activations_mb"]:.0f} | '
            f'{r["peak_above_model_mb"]:.0f} | {r["peak_rss_mb"]:.0f} |'
        )
    torch.set_num_threads(args['threads'])
    layer = layer_comparison(args)
    print(
        f'\none qkv layer ({layer["tokens"]} tokens x {layer["dim"]}), forward + '
        f'backward, interleaved: explora {layer["explora_ms"]:.1f} ms vs peft '
        f'{layer["peft_ms"]:.1f} ms (explora throughput '
        f'{layer["peft_ms"] / layer["explora_ms"]:.2f}x peft); saved activations '
        f'{layer["explora_saved_mb"]:.2f} vs {layer["peft_saved_mb"]:.2f} MB'
    )
    inf = ref['inference']
    print(
        f'\nmerged ExPLoRA inference {inf["merged_s"]:.3f} s vs plain timm {inf["plain_timm_s"]:.3f} s '
        f'(ratio {inf["merged_s"] / inf["plain_timm_s"]:.2f})'
    )
    print(json.dumps(results))


if __name__ == '__main__':
    main()
