"""One MAE pre-training step: ExPLoRA (M-[1,L]-r32 + decoder LoRA r32) vs full MAE.

Both run through ``lightning.Trainer`` on the CPU at ``--precision`` (``auto``,
the default: ``bf16-mixed`` where the CPU computes bf16 natively, ``32-true``
elsewhere, as :class:`explora_geo.precision.AutoPrecision` chooses), the same ViT (ViT-B/16 or ViT-L/16), the same 512-wide 8-block decoder,
batch, image size, mask ratio 0.75, norm-pix loss and TorchGeo's MAE
augmentation:

* ``explora``: :class:`explora_geo.tasks.ExPLoRAMAE`, blocks 1 and L unfrozen,
  LoRA r32 on Q, V of the others, norms and class token; decoder frozen but
  for LoRA r32 on Q, V and its norms.
* ``torchgeo``: ``torchgeo.tasks.MAE``, full pre-training of encoder and decoder.

Each variant runs in a fresh process, alternating, ``--repeats`` times.
Reported per variant: median step time (forward + backward + AdamW step, from
``on_train_batch_start`` to ``on_train_batch_end``), images/s, peak resident
memory (``ru_maxrss``) above the process's RSS measured just before the task is
built (so it counts weights, gradients, optimiser state and activations), the
FLOPs of one step's forward + backward (``torch.utils.flop_counter``), and
the fraction of the machine's matmul peak at that precision (measured with a
large matmul in that dtype in this script) the step reaches. Step times are given as wall time and
as the process's CPU time (``time.process_time``): on a shared machine, CPU
time with ``--threads 1`` is the figure that other processes do not distort.
``--attn math`` switches timm's attention from PyTorch's fused SDPA to the
explicit product in both variants.

Usage: ``python benchmarks/mae_pretraining_step.py [--model vitb|vitl] [--batch 8]
[--threads 1] [--attn fused|math] [--precision auto|32|bf16]``
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil
import torch

from explora_geo.precision import (
    PrecisionName,
    autocast,
    environment_report,
    resolve_precision,
)

from harness import StepTimer, add_precision_option, quiet_trainer

MODELS = {
    'vitb': ('explora_vitb_mae', 'vit_base_patch16_224'),
    'vitl': ('explora_vitl_mae', 'vit_large_patch16_224'),
}


def matmul_peak(
    precision: PrecisionName, n: int = 2048, iters: int = 3
) -> tuple[float, float]:
    """Best matmul throughput in the precision's dtype: FLOP per wall and CPU second."""
    dtype = torch.float32 if precision == '32-true' else torch.bfloat16
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    wall = cpu = float('inf')
    for _ in range(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        a @ b
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return 2 * n**3 / wall, 2 * n**3 / cpu


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import lightning
    from timm.models.vision_transformer import Attention
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.flop_counter import FlopCounterMode
    from torchgeo.tasks import MAE

    from explora_geo.adapter import ExPLoRAConfig, count_trainable_parameters
    from explora_geo.tasks.explora_mae import ExPLoRAMAE

    torch.set_num_threads(args.threads)
    steps = args.warmup + args.steps
    images = torch.rand(args.batch, 3, args.img, args.img)

    class Batches(Dataset[dict[str, torch.Tensor]]):
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {'image': images[i % args.batch]}

        def __len__(self) -> int:
            return args.batch * steps

    loader = DataLoader(Batches(), batch_size=args.batch)
    baseline = psutil.Process().memory_info().rss
    explora_name, timm_name = MODELS[args.model]
    decoder = {'decoder_embed_dim': 512, 'decoder_depth': 8, 'decoder_num_heads': 16}
    if args.variant == 'explora':
        task: lightning.LightningModule = ExPLoRAMAE(
            model=explora_name,
            img_size=args.img,
            adapter=ExPLoRAConfig(unfrozen_blocks=(0, -1), rank=32),
            decoder_lora_rank=32,
            decoder_kwargs=decoder,
        )
    else:
        task = MAE(
            model=timm_name,
            size=args.img,
            decoder_dim=512,
            decoder_depth=8,
            decoder_num_heads=16,
            norm_pix_loss=True,
        )
    trainable = count_trainable_parameters(task)
    if args.attn == 'math':
        for module in task.modules():
            if isinstance(module, Attention):
                # timm declares fused_attn Final for TorchScript; it is a plain
                # per-instance flag that forward() reads on every call.
                module.fused_attn = False  # type: ignore[misc]

    # FLOPs of one forward + backward (at the training precision).
    batch = next(iter(loader))
    counter = FlopCounterMode(display=False)
    with counter, autocast(args.resolved_precision, 'cpu'):
        loss = task.training_step(batch, 0)
        assert isinstance(loss, torch.Tensor)
        loss.backward()
    task.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    timer = StepTimer()
    trainer = quiet_trainer(
        timer, args.resolved_precision, max_epochs=1, limit_train_batches=steps
    )
    trainer.fit(task, loader)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        'variant': args.variant,
        'step_s': statistics.median(timer.wall[args.warmup :]),
        'cpu_s': statistics.median(timer.cpu[args.warmup :]),
        'peak_bytes': peak - baseline,
        'flops': flops,
        'trainable': trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=sorted(MODELS), default='vitb')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--img', type=int, default=224)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        '--attn',
        choices=['fused', 'math'],
        default='fused',
        help="timm attention of both variants: 'fused' (SDPA, timm's default) or "
        "'math' (explicit softmax(QK^T)V)",
    )
    add_precision_option(parser)
    parser.add_argument('--variant', choices=['explora', 'torchgeo'])
    args = parser.parse_args()
    if args.img != 224 and args.variant != 'explora':
        # torchgeo's MAE builds its timm ViT at the model's own 224 px.
        parser.error(
            f'--img {args.img}: the torchgeo variant (torchgeo.tasks.MAE) runs '
            'at 224 px only; use --img 224, or --variant explora alone'
        )
    args.resolved_precision = resolve_precision(args.precision, 'cpu')

    if args.variant:
        print(json.dumps(worker(args)))
        return

    torch.set_num_threads(args.threads)
    peak, peak_cpu = matmul_peak(args.resolved_precision)
    results: dict[str, list[dict[str, Any]]] = {'explora': [], 'torchgeo': []}
    for _ in range(args.repeats):
        for variant in results:
            cmd = [sys.executable, __file__, *sys.argv[1:], '--variant', variant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = {}
    for variant, runs in results.items():
        step = statistics.median(r['step_s'] for r in runs)
        cpu = statistics.median(r['cpu_s'] for r in runs)
        rows[variant] = {
            'step': step,
            'cpu': cpu,
            'ips': args.batch / step,
            'ips_cpu': args.batch / cpu,
            'mem': statistics.median(r['peak_bytes'] for r in runs) / 2**30,
            'flops': runs[0]['flops'],
            'mfu': runs[0]['flops'] / step / peak,
            'mfu_cpu': runs[0]['flops'] / cpu / peak_cpu,
            'trainable': runs[0]['trainable'],
        }
    e, t = rows['explora'], rows['torchgeo']
    print(environment_report(args.threads))
    print(
        f'{args.resolved_precision} matmul peak {peak / 1e9:.0f} GFLOP/s wall, '
        f'{peak_cpu / 1e9:.0f} GFLOP per CPU-s'
    )
    print(
        f'{args.model}, batch {args.batch}, {args.img} px, {args.resolved_precision} '
        f'(--precision {args.precision}), {args.attn} attention, median of '
        f'{args.steps} steps after {args.warmup} warm-up, {args.repeats} processes each'
    )
    print(
        '| variant | trainable | step wall (s) | step CPU (s) | img/s wall | '
        'img/CPU-s | peak RSS (GiB) | fwd+bwd GFLOP | peak used (wall / CPU) |'
    )
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for name, r in rows.items():
        print(
            f'| {name} | {r["trainable"] / 1e6:.1f}M | {r["step"]:.2f} | '
            f'{r["cpu"]:.2f} | {r["ips"]:.2f} | {r["ips_cpu"]:.2f} | {r["mem"]:.2f} | '
            f'{r["flops"] / 1e9:.0f} | {r["mfu"]:.1%} / {r["mfu_cpu"]:.1%} |'
        )
    print(
        f'throughput ratio (explora / torchgeo): {e["ips"] / t["ips"]:.2f}x wall, '
        f'{e["ips_cpu"] / t["ips_cpu"]:.2f}x CPU time; FLOP ratio '
        f'{t["flops"] / e["flops"]:.2f}x; peak memory ratio {e["mem"] / t["mem"]:.2f}x'
    )
    print('per-process step times (wall, CPU):')
    for variant, runs in results.items():
        print(
            f'  {variant}: '
            + ', '.join(f'{r["step_s"]:.2f}/{r["cpu_s"]:.2f}' for r in runs)
        )


if __name__ == '__main__':
    main()
