"""Lightning callback that exports the merged encoder and Δ_T during pre-training.

.. versionadded:: 0.1
"""

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from .pretraining import ExPLoRAPretrainingTask


class ExPLoRAExport(Callback):
    """Call ``task.export(dirpath, tag)`` every N optimiser steps and at the end.

    Step exports are tagged ``step<global_step>`` (zero-padded to 8 digits),
    the final one ``last``. Only the global rank zero writes.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        every_n_steps: int = 0,
        export_on_train_end: bool = True,
    ) -> None:
        """Initialize a new ExPLoRAExport instance.

        Args:
            dirpath: Output folder (default: ``<trainer.default_root_dir>/exports``).
            every_n_steps: Export every this many optimiser steps (0: never).
            export_on_train_end: Export ``last`` when training ends.

        Raises:
            ValueError: If *every_n_steps* is negative.
        """
        if every_n_steps < 0:
            raise ValueError(f'every_n_steps must be >= 0, got {every_n_steps}')
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_steps = every_n_steps
        self.export_on_train_end = export_on_train_end
        self._last_step = -1
        #: Files written so far, by tag.
        self.exported: dict[str, dict[str, Path]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the module can export and resolve the output folder.

        Args:
            trainer: The trainer.
            pl_module: The task.
            stage: Lightning stage.

        Raises:
            TypeError: If *pl_module* is not an ExPLoRA pre-training task.
        """
        if not isinstance(pl_module, ExPLoRAPretrainingTask):
            raise TypeError(
                f'ExPLoRAExport needs an ExPLoRAPretrainingTask, got '
                f'{type(pl_module).__name__}'
            )
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / 'exports'

    def _export(self, trainer: Trainer, pl_module: LightningModule, tag: str) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        assert isinstance(pl_module, ExPLoRAPretrainingTask)
        assert self.dirpath is not None
        self.exported[tag] = pl_module.export(self.dirpath, tag)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Export when an optimiser step lands on the schedule.

        Args:
            trainer: The trainer.
            pl_module: The task.
            outputs: Output of the training step.
            batch: The batch.
            batch_idx: Index of the batch.
        """
        step = trainer.global_step
        # With gradient accumulation several batches end on the same step.
        if (
            self.every_n_steps
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_step
        ):
            self._export(trainer, pl_module, f'step{step:08d}')

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export ``last``.

        Args:
            trainer: The trainer.
            pl_module: The task.
        """
        if self.export_on_train_end:
            self._export(trainer, pl_module, 'last')
