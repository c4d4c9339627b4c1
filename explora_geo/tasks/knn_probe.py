"""A k-NN probe of the representations during pre-training.

:class:`KNNProbe` is a Lightning callback: every ``every_n_steps`` optimiser
steps (or at the end of every training epoch) it embeds a labelled training
set and a labelled validation set with the module's ``embed`` method (for
:class:`~explora_geo.tasks.ExPLoRADINOv2`: the EMA teacher's class token),
classifies the validation features by a similarity-weighted vote of their k
nearest training features, and logs the top-1 accuracy. The vote is DINO's
weighted k-NN (cosine similarity, weights ``exp(sim / T)``, k = 20 and
T = 0.07 as in DinoV2's evaluation), computed with lightly's
:func:`~lightly.utils.benchmarking.knn_predict`.

.. versionadded:: 0.1
"""

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, cast

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from .callbacks import StepSchedule


class KNNProbe(StepSchedule):
    """Log the k-NN top-1 accuracy of the current representation.

    The module must have ``embed(images) -> (B, D)`` and may have a
    ``full_parameters()`` context (entered by every rank, for FSDP). Only global
    rank 0 computes; the others wait.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        train_loader: Iterable[dict[str, Any]],
        val_loader: Iterable[dict[str, Any]],
        num_classes: int,
        k: int = 20,
        temperature: float = 0.07,
        every_n_steps: int | None = None,
        name: str = 'knn_top1',
    ) -> None:
        """Initialize a new KNNProbe instance.

        Args:
            train_loader: Batches ``{'image', 'label'}`` of the reference set,
                images in the range the module's ``embed`` expects.
            val_loader: Batches ``{'image', 'label'}`` to classify.
            num_classes: Number of classes.
            k: Neighbours in the vote.
            temperature: Temperature of the similarity weights.
            every_n_steps: Probe every this many optimiser steps; ``None``
                probes at the end of every training epoch.
            name: Name of the logged metric.

        Raises:
            ValueError: If a count is not positive.
        """
        if (
            num_classes < 1
            or k < 1
            or (every_n_steps is not None and every_n_steps < 1)
        ):
            raise ValueError(
                'num_classes, k and every_n_steps must be >= 1, got '
                f'{num_classes}, {k}, {every_n_steps}'
            )
        super().__init__(every_n_steps)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.num_classes = num_classes
        self.k = k
        self.temperature = temperature
        self.name = name

    @staticmethod
    def _features(
        pl_module: LightningModule, loader: Iterable[dict[str, Any]]
    ) -> tuple[Tensor, Tensor]:
        features, labels = [], []
        for batch in loader:
            images = batch['image'].to(pl_module.device)
            embed = cast(Callable[[Tensor], Tensor], pl_module.embed)
            embedded = embed(images)
            features.append(F.normalize(embedded.float(), dim=1))
            labels.append(torch.as_tensor(batch['label']).to(pl_module.device))
        if not features:
            raise ValueError('the k-NN probe got an empty dataloader')
        return torch.cat(features), torch.cat(labels).long()

    @torch.no_grad()
    def accuracy(self, pl_module: LightningModule) -> float:
        """Top-1 k-NN accuracy of the module's current features.

        Args:
            pl_module: The module being trained.

        Returns:
            The fraction of validation samples classified correctly.

        Raises:
            TypeError: If the module has no ``embed`` method.
        """
        if not callable(getattr(pl_module, 'embed', None)):
            raise TypeError(
                f'{type(pl_module).__name__} has no embed(images) method for the k-NN probe'
            )
        bank, bank_labels = self._features(pl_module, self.train_loader)
        query, labels = self._features(pl_module, self.val_loader)
        predicted = knn_predict(
            query,
            bank.t(),
            bank_labels,
            self.num_classes,
            knn_k=min(self.k, bank.shape[0]),
            knn_t=self.temperature,
        )
        return float((predicted[:, 0] == labels).float().mean())

    def probe(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run the probe and log its accuracy.

        Args:
            trainer: The trainer.
            pl_module: The module being trained.
        """
        full_parameters = getattr(pl_module, 'full_parameters', None)
        with full_parameters() if callable(full_parameters) else nullcontext():
            value = self.accuracy(pl_module) if trainer.is_global_zero else None
        if value is not None:
            pl_module.log(self.name, value, rank_zero_only=True)
        trainer.strategy.barrier('knn_probe')

    def on_scheduled_step(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Probe every ``every_n_steps`` optimiser steps.

        Args:
            trainer: The trainer.
            pl_module: The module being trained.
        """
        self.probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Probe at the end of each epoch when no step interval is set.

        Args:
            trainer: The trainer.
            pl_module: The module being trained.
        """
        if self.every_n_steps is None:
            self.probe(trainer, pl_module)
