"""Sizes of a data module's datasets, which torchgeo types as ``Dataset | None``."""

from collections.abc import Sized


def length(dataset: object) -> int:
    """``len(dataset)``, failing clearly where the data module has none.

    Args:
        dataset: A data module's ``train_dataset``, ``val_dataset``, ...

    Returns:
        The number of samples.
    """
    assert isinstance(dataset, Sized), f'not a sized dataset: {dataset!r}'
    return len(dataset)
