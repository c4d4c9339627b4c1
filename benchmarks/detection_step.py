"""One Faster R-CNN training step of the GlobalWheat detection recipe on the CPU.

Builds :class:`explora_geo.tasks.ObjectDetectionTask` as
``recipes/wilds_globalwheat_detection.yaml`` does (LoRA r8, ViTDet pyramid,
Faster R-CNN) on a 2-block 64-wide backbone without source weights, and times
forward + backward + AdamW on a batch of random images with two boxes each,
for each configuration given (image size, pyramid width, precision), in one
process, one after the other. Reported: the median of ``--repeats`` steps
after one warm-up step, and where the time goes (torch profiler, top
operators) with ``--profile``.

Usage: ``python benchmarks/detection_step.py [--configs 1024:256:32 112:32:32]
[--batch 2] [--threads 1] [--repeats 3] [--profile]``; a configuration is
``image_size:fpn_channels:precision`` with precision ``32`` or ``bf16``.
"""

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.profiler import profile

from explora_geo.precision import environment_report
from explora_geo.tasks import ObjectDetectionTask


def measure(
    size: int, channels: int, precision: str, batch: int, repeats: int, prof: bool
) -> dict[str, object]:
    """Median step time of one configuration."""
    torch.manual_seed(0)
    task = ObjectDetectionTask(
        backbone='explora_vitl_dino',
        weights=None,
        num_classes=2,
        finetune='lora',
        fpn_channels=channels,
        model_kwargs={'depth': 2, 'embed_dim': 64, 'num_heads': 2},
    )
    model = task.model.train()
    images = list(torch.rand(batch, 3, size, size))
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [100.0, 120.0, 150.0, 170.0]])
    targets = [
        {'boxes': boxes * size / 1024, 'labels': torch.tensor([1, 1])}
        for _ in range(batch)
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    autocast = (
        torch.autocast('cpu', dtype=torch.bfloat16)
        if precision == 'bf16'
        else contextlib.nullcontext()
    )

    def step() -> float:
        start = time.perf_counter()
        with autocast:
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    step()
    times = [step() for _ in range(repeats)]
    result: dict[str, object] = {
        'image_size': size,
        'fpn_channels': channels,
        'precision': precision,
        'batch': batch,
        'step_s': round(statistics.median(times), 3),
    }
    if prof:
        with profile() as p:
            step()
        top = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
        result['top_ops_s'] = {
            e.key: round(e.self_cpu_time_total / 1e6, 3) for e in top
        }
    return result


def main() -> None:
    """Parse the arguments and print one JSON line per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=['1024:256:32', '112:32:32'])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--profile', action='store_true')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(environment_report(args.threads), flush=True)
    for config in args.configs:
        size, channels, precision = config.split(':')
        result = measure(
            int(size), int(channels), precision, args.batch, args.repeats, args.profile
        )
        print(json.dumps({**result, 'threads': args.threads}), flush=True)


if __name__ == '__main__':
    main()
