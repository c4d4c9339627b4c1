"""What the benchmarks share: ``--precision``, random images, timed training steps.

The benchmarks run as scripts (``python benchmarks/<name>.py``), which puts
this folder on ``sys.path``, so each imports this module as ``harness``.
"""

import argparse
import time
from typing import Any

import lightning
import torch
from torch import Tensor
from torch.utils.data import Dataset

from explora_geo.precision import PRECISION_CHOICES

__all__ = ('RandomImages', 'StepTimer', 'add_precision_option', 'quiet_trainer')


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--precision`` (``auto``, ``32`` or ``bf16``; default ``auto``).

    Args:
        parser: The benchmark's argument parser.
    """
    parser.add_argument(
        '--precision',
        choices=PRECISION_CHOICES,
        default='auto',
        help='auto: bf16 where the device computes it natively, else fp32 '
        '(see explora_geo.precision)',
    )


class RandomImages(Dataset[dict[str, Tensor]]):
    """Fixed random images in [0, 1]."""

    def __init__(self, n: int, size: int) -> None:
        """Draw *n* RGB images of *size* x *size* pixels (seed 0).

        Args:
            n: Number of images.
            size: Height and width.
        """
        self.images = torch.rand(
            n, 3, size, size, generator=torch.Generator().manual_seed(0)
        )

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        """Sample *i* as ``{'image': ...}``."""
        return {'image': self.images[i]}


class StepTimer(lightning.Callback):
    """Wall and CPU time of each training step (CUDA synchronised)."""

    def __init__(self) -> None:
        """Start with no steps timed."""
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @staticmethod
    def _sync(module: lightning.LightningModule) -> None:
        if module.device.type == 'cuda':
            torch.cuda.synchronize()

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Start the clocks."""
        self._sync(pl_module)
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        """Stop the clocks."""
        self._sync(pl_module)
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def quiet_trainer(
    timer: StepTimer, precision: str, accelerator: str = 'cpu', **kwargs: Any
) -> lightning.Trainer:
    """A one-device trainer that writes nothing (no logs, checkpoints, bars).

    Args:
        timer: The callback timing the steps.
        precision: Lightning's precision.
        accelerator: ``'cpu'`` or ``'cuda'``.
        **kwargs: Further ``Trainer`` arguments (``max_steps``...).

    Returns:
        The trainer.
    """
    return lightning.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **kwargs,
    )
