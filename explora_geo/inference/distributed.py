"""Prediction over many rasters, shared across processes by Lightning.

Each raster (or product) is one item of a dataset that Lightning's
``Trainer.predict`` distributes over its processes; in prediction Lightning
splits items without repeating any (``UnrepeatedDistributedSampler``), so
every raster is predicted and written by exactly one process. Any Lightning
strategy works: ``ddp`` on several GPUs, or on CPU processes with gloo.

.. versionadded:: 0.1
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .tiles import predict_raster

__all__ = ('RasterJob', 'TilePredictor', 'predict_many')


@dataclass
class RasterJob:
    """One input (a raster or a product) and where its predictions go.

    .. versionadded:: 0.1
    """

    inputs: str | list[str]
    output: str
    vectors: str | None = None
    #: Options of :func:`~explora_geo.inference.tiles.predict_raster` for this job.
    options: Mapping[str, Any] = field(default_factory=dict)


class _Jobs(Dataset[RasterJob]):
    def __init__(self, jobs: Sequence[RasterJob]) -> None:
        self.jobs = list(jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> RasterJob:
        return self.jobs[index]


def _collate(items: list[RasterJob]) -> list[RasterJob]:
    return items


class TilePredictor(LightningModule):
    """Runs :func:`~explora_geo.inference.tiles.predict_raster` for each job it is given.

    .. versionadded:: 0.1
    """

    def __init__(self, model: nn.Module, **options: Any) -> None:
        """Initialize a new TilePredictor instance.

        Args:
            model: The task or module to predict with.
            **options: Options of :func:`~explora_geo.inference.tiles.predict_raster`
                shared by every job.
        """
        super().__init__()
        self.model = model
        self.options = options

    def predict_step(
        self, batch: list[RasterJob], batch_idx: int
    ) -> list[dict[str, Any]]:
        """Predict the rasters of one batch of jobs on this process's device.

        Args:
            batch: Jobs.
            batch_idx: Index of the batch.

        Returns:
            One summary per job: rank, input, output, tiles.
        """
        results = []
        for job in batch:
            result = predict_raster(
                self.model,
                job.inputs,
                job.output,
                device=self.device,
                vector_path=job.vectors,
                **{**self.options, **job.options},
            )
            results.append(
                {
                    'rank': self.global_rank,
                    'pid': os.getpid(),
                    'input': job.inputs,
                    'output': str(result.path),
                    'kind': result.kind,
                    'tiles': result.num_tiles,
                    'tiles_run': result.tiles_run,
                }
            )
        return results


def predict_many(
    model: nn.Module,
    jobs: Sequence[RasterJob],
    accelerator: str = 'cpu',
    devices: int = 1,
    strategy: str | Strategy | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Predict every job, shared across *devices* processes.

    Args:
        model: The task or module.
        jobs: Inputs and outputs.
        accelerator: Lightning accelerator (``'cpu'``, ``'gpu'``, ``'auto'``).
        devices: Processes / devices.
        strategy: Lightning strategy (default ``ddp`` for several devices,
            with the gloo backend on CPU).
        **options: Options of :func:`~explora_geo.inference.tiles.predict_raster`.

    Returns:
        This process's summaries (one per job it predicted).
    """
    if strategy is None:
        strategy = 'auto'
        if devices > 1:
            backend = 'gloo' if accelerator == 'cpu' else None
            strategy = DDPStrategy(process_group_backend=backend)
    trainer = Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(_Jobs(jobs), batch_size=1, collate_fn=_collate)
    outputs = trainer.predict(TilePredictor(model, **options), loader)
    return [item for batch in outputs or [] for item in batch]


def job_output(
    inputs: str | os.PathLike[str], folder: str | os.PathLike[str], suffix: str = '.tif'
) -> Path:
    """The output path of one input in an output folder: its name, without ``.SAFE``.

    Args:
        inputs: A raster or product path.
        folder: The output folder.
        suffix: The output's suffix.

    Returns:
        ``folder / (stem + suffix)``.
    """
    path = Path(inputs)
    stem = path.name.removesuffix('.SAFE') if path.is_dir() else path.stem
    return Path(folder) / f'{stem}{suffix}'
