"""DinoV2 ExPLoRA pre-training: shared-weight EMA teacher vs a deep-copied teacher.

Two variants of :class:`explora_geo.tasks.ExPLoRADINOv2`, identical except for
the teacher:

* ``shared``: the task as shipped; the teacher holds EMA copies of the
  trainable tensors only and reuses the student's frozen tensors.
* ``deepcopy``: DinoV2's design; the teacher is a full deep copy of encoder and
  head, updated by EMA over all its parameters (``torch._foreach`` over every
  tensor, as DinoV2's ``update_teacher``).

Memory: bytes of the distinct tensors held by the task (parameters, buffers)
plus the AdamW state, after the first optimiser step; exact, from the tensors'
storages. Also computed for the paper's ViT-L/14 configuration (D-[L]-r64,
65,536 prototypes) on the meta device, where no step runs (AdamW state = 2 x
the trainable values).

The EMA update alone is also timed for that ViT-L configuration (real
tensors, random weights), since it is where the two designs differ in work.

Speed: each variant runs ``lightning.Trainer.fit`` in a fresh process,
alternating, ``--repeats`` times, with the same ViT, batch, crops and precision.
Step time is measured from ``on_train_batch_start`` to ``on_train_batch_end``
(multi-crop, masks, teacher, student, backward, AdamW, EMA), after
``--warmup`` steps, as wall time and as process CPU time (the figure that other
jobs on a shared machine distort least with ``--threads 1``).

Usage: ``python benchmarks/dinov2_pretraining.py [--model explora_vitb_dino]
[--img-size 112] [--batch 4] [--local-crops 4] [--steps 6] [--repeats 2]
[--precision auto|32|bf16] [--threads 1] [--device cpu|cuda]``; ``--repeats 0``
prints only the ViT-L figures. ``--precision auto`` (the default) is bf16 mixed
precision where the device computes bf16 natively, fp32 (fp16 mixed on CUDA)
elsewhere (:mod:`explora_geo.precision`).
"""

import argparse
import copy
import inspect
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import lightning
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from explora_geo.precision import environment_report, resolve_precision
from explora_geo.ssl import DINOv2Config
from explora_geo.tasks.explora_dinov2 import ExPLoRADINOv2

from harness import RandomImages, StepTimer, add_precision_option, quiet_trainer


class DeepCopyTeacher(nn.Module):
    """DinoV2's teacher: a full copy of the network, EMA over all its parameters."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(student).requires_grad_(False)
        self._student = (student,)

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """EMA step over every parameter of the copy."""
        teacher: list[Tensor] = list(self.network.parameters())
        student = [p.detach() for p in self._student[0].parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)

    @torch.no_grad()
    def run(self, fn: Any, *args: Any) -> Any:
        """Call ``fn(copy, *args)`` in eval mode without autograd."""
        self.network.eval()
        return fn(self.network, *args)

    def forward(self, *args: Any) -> Any:
        """The copy's forward."""
        return self.run(lambda module, *a: module(*a), *args)


class DeepCopyDINOv2(ExPLoRADINOv2):
    """The task with DinoV2's deep-copied teacher."""

    def configure_models(self) -> None:
        """Build the task, then replace both teachers by full copies."""
        super().configure_models()
        objective = self.objective
        objective.teacher_encoder = DeepCopyTeacher(self.encoder)  # type: ignore[assignment]
        objective.teacher_head = DeepCopyTeacher(objective.head)  # type: ignore[assignment]


VARIANTS = {'shared': ExPLoRADINOv2, 'deepcopy': DeepCopyDINOv2}


def state_bytes(
    task: nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, int]:
    """Bytes of distinct storages: module tensors, and AdamW state."""
    seen: set[int] = set()

    def add(tensors: Any) -> int:
        total = 0
        for t in tensors:
            if not isinstance(t, Tensor) or t.numel() == 0:
                continue
            key = t.untyped_storage().data_ptr() if t.device.type != 'meta' else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += (
                t.untyped_storage().nbytes() if t.device.type != 'meta' else t.nbytes
            )
        return total

    module = add([*task.parameters(), *task.buffers()])
    trainable = sum(
        p.numel() * p.element_size() for p in task.parameters() if p.requires_grad
    )
    if optimizer is None:
        adam = 2 * trainable  # exp_avg and exp_avg_sq
    else:
        adam = add(v for state in optimizer.state.values() for v in state.values())
    return {
        'module': module,
        'optimizer': adam,
        'total': module + adam,
        'trainable': trainable,
    }


def paper_configuration() -> dict[str, dict[str, int]]:
    out = {}
    for name, cls in VARIANTS.items():
        with torch.device('meta'):
            task = cls()
        out[name] = state_bytes(task, None)
    return out


def paper_update_times(repeats: int = 3) -> dict[str, float]:
    """Median seconds of one EMA update of encoder + head, ViT-L/14 paper config."""
    out = {}
    for name, cls in VARIANTS.items():
        task = cls()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            task.objective.update_teacher(0.994)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
        del task
    return out


class Timer(StepTimer):
    """Step times (wall and CPU) and the tensor memory after the first step."""

    def __init__(self) -> None:
        super().__init__()
        self.memory: dict[str, int] = {}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        """Stop the clocks; measure memory once."""
        super().on_train_batch_end(trainer, pl_module, *args)
        if not self.memory:
            self.memory = state_bytes(pl_module, trainer.optimizers[0])


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    lightning.seed_everything(0, verbose=False)
    defaults = inspect.signature(ExPLoRADINOv2).parameters
    task = VARIANTS[args.variant](
        model=args.model,
        img_size=args.img_size,
        optimization=replace(defaults['optimization'].default, warmup_steps=1),
        objective=DINOv2Config(
            num_local_crops=args.local_crops, freeze_last_layer_steps=0
        ),
    )
    timer = Timer()
    trainer = quiet_trainer(
        timer, args.resolved_precision, args.device, max_steps=args.steps
    )
    data = DataLoader(
        RandomImages(args.batch * args.steps, args.img_size), batch_size=args.batch
    )
    trainer.fit(task, data)
    wall, cpu = timer.wall[args.warmup :], timer.cpu[args.warmup :]
    return {
        'wall_s': statistics.median(wall),
        'cpu_s': statistics.median(cpu),
        'memory': timer.memory,
    }


def side_by_side(args: argparse.Namespace) -> None:
    """Run both variants in fresh processes, alternating, and print the comparison."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            cmd = [sys.executable, __file__, *sys.argv[1:], '--variant', name]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))

    print(
        f'{args.model}, {args.img_size} px, batch {args.batch}, 2 global + '
        f'{args.local_crops} local crops, {args.resolved_precision} '
        f'(--precision {args.precision})'
    )
    rows = {}
    for name, runs in results.items():
        rows[name] = {
            'memory_MiB': runs[0]['memory']['total'] / 2**20,
            'wall_s': statistics.median(r['wall_s'] for r in runs),
            'cpu_s': statistics.median(r['cpu_s'] for r in runs),
        }
        print(
            f'{name:9s} params+buffers+AdamW {rows[name]["memory_MiB"]:8.1f} MiB  '
            f'step {rows[name]["wall_s"]:.3f} s wall, {rows[name]["cpu_s"]:.3f} s CPU'
        )
    s, d = rows['shared'], rows['deepcopy']
    print(
        f'ratio shared/deepcopy: memory {s["memory_MiB"] / d["memory_MiB"]:.3f}, '
        f'throughput (wall) {d["wall_s"] / s["wall_s"]:.3f}, (CPU) {d["cpu_s"] / s["cpu_s"]:.3f}'
    )
    print(
        f'ratio shared/deepcopy of params+buffers alone: '
        f'{results["shared"][0]["memory"]["module"] / results["deepcopy"][0]["memory"]["module"]:.3f}'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='explora_vitb_dino')
    parser.add_argument('--img-size', type=int, default=112)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--local-crops', type=int, default=4)
    parser.add_argument('--steps', type=int, default=6)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=2)
    add_precision_option(parser)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--variant', choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.resolved_precision = resolve_precision(args.precision, args.device)
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    print(environment_report(args.threads))
    print(f'lightning {lightning.__version__}, device {args.device}')
    if args.repeats > 0:
        side_by_side(args)
    paper = paper_configuration()
    shared, deep = paper['shared'], paper['deepcopy']
    frozen = shared['module'] - 2 * shared['trainable']
    print(
        'ViT-L/14 D-[L]-r64, 65536 prototypes (fp32): '
        f'shared {shared["total"] / 2**30:.3f} GiB, deepcopy {deep["total"] / 2**30:.3f} GiB, '
        f'ratio {shared["total"] / deep["total"]:.3f} (params+buffers alone '
        f'{shared["module"] / deep["module"]:.3f}); frozen {frozen / 2**30:.3f} GiB, '
        f'trainable {shared["trainable"] / 2**30:.3f} GiB'
    )
    update = paper_update_times()
    print(
        'ViT-L/14 paper config, one EMA update (encoder + head): '
        + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in update.items())
    )


if __name__ == '__main__':
    main()
