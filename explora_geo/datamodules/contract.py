"""What a datamodule promises the task it feeds: the normalisation, the class names.

Every datamodule of the package exposes, in every mode,

* ``normalization``: the :class:`~explora_geo.sensors.Normalization` its
  batches carry when they reach the task (bands in order, kind, statistics);
* ``classes``: the class names in label order, or None (unlabelled mode, or
  before :meth:`setup` when the names are read from the data).

Tasks read both at fit start: pre-training objectives to check that images
arrive in the scale they take, every task to record them in its checkpoints.

.. versionadded:: 0.1
"""

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..sensors import Normalization


def device_stats(norm: Normalization) -> tuple[Tensor, Tensor]:
    """Mean and std of the on-device ``Normalize`` step of *norm*.

    ``'satmae'`` clips, so datasets apply it per sample; its device step is the
    identity.

    Args:
        norm: The normalisation.

    Returns:
        Per-band shift and divisor, float32 ``(C,)``.

    .. versionadded:: 0.1
    """
    if norm.kind == 'satmae':
        n = len(norm.bands)
        return torch.zeros(n), torch.ones(n)
    return norm.affine()


def device_normalize(norm: Normalization) -> K.Normalize:
    """The on-device step of *norm* for ``(B, C, H, W)`` batches (see :func:`device_stats`).

    Args:
        norm: The normalisation.

    Returns:
        A kornia ``Normalize``.

    .. versionadded:: 0.1
    """
    mean, std = device_stats(norm)
    return K.Normalize(mean=mean, std=std)


def dataset_classes(dataset: Dataset | None) -> tuple[str, ...] | None:
    """Class names of *dataset* (looking through ``Subset``), if it has any.

    Args:
        dataset: A dataset or None.

    Returns:
        The names in label order, or None.

    .. versionadded:: 0.1
    """
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, 'classes', None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and classes:
        return tuple(str(c) for c in classes)
    return None


class DataContract:
    """Mixin of the package's datamodules: ``normalization`` and ``classes``.

    Subclasses set :attr:`normalization` in ``__init__``; :attr:`classes` is
    read from the fixed names in :attr:`class_names` or from the datasets built
    by ``setup``.

    .. versionadded:: 0.1
    """

    #: How the images of a batch are normalised when they reach the task.
    normalization: Normalization

    #: Class names known without reading the data, or None.
    class_names: tuple[str, ...] | None = None

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names in label order; None in unlabelled mode or when unknown."""
        if getattr(self, 'unlabeled', False):
            return None
        if self.class_names is not None:
            return self.class_names
        for name in ('train_dataset', 'val_dataset', 'test_dataset'):
            found = dataset_classes(getattr(self, name, None))
            if found is not None:
                return found
        return None
