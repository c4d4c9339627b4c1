"""Lightning callback that exports the merged encoder and Δ_T during pre-training.

.. versionadded:: 0.1
"""

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from .pretraining import ExPLoRAPretrainingTask


class StepSchedule(Callback):
    """A callback that acts every ``every_n_steps`` optimiser steps.

    With gradient accumulation several batches end on the same optimiser
    step; the action runs once per step. Subclasses implement
    :meth:`on_scheduled_step`.

    .. versionadded:: 0.1
    """

    def __init__(self, every_n_steps: int | None) -> None:
        """Initialize a new StepSchedule instance.

        Args:
            every_n_steps: Act every this many optimiser steps (0 or ``None``:
                never).
        """
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_scheduled_step(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Act; called when an optimiser step lands on the schedule.

        Args:
            trainer: The trainer.
            pl_module: The module being trained.
        """
        raise NotImplementedError

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Act when an optimiser step lands on the schedule.

        Args:
            trainer: The trainer.
            pl_module: The module being trained.
            outputs: Output of the training step.
            batch: The batch.
            batch_idx: Index of the batch.
        """
        step = trainer.global_step
        n = self.every_n_steps
        if n and step > 0 and step % n == 0 and step != self._last_step:
            self._last_step = step
            self.on_scheduled_step(trainer, pl_module)


class ExPLoRAExport(StepSchedule):
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
        super().__init__(every_n_steps)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.export_on_train_end = export_on_train_end
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

    def on_scheduled_step(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export ``step<global_step>``.

        Args:
            trainer: The trainer.
            pl_module: The task.
        """
        self._export(trainer, pl_module, f'step{trainer.global_step:08d}')

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export ``last``.

        Args:
            trainer: The trainer.
            pl_module: The task.
        """
        if self.export_on_train_end:
            self._export(trainer, pl_module, 'last')
