"""The dictionary a task's ``configure_optimizers`` returns, typed for tests."""

from typing import Any, cast

from lightning import LightningModule


def optimizer_config(task: LightningModule) -> dict[str, Any]:
    """``task.configure_optimizers()``, checked to be the dictionary form.

    Args:
        task: A task whose ``configure_optimizers`` returns
            ``{'optimizer': ..., 'lr_scheduler': ...}``.

    Returns:
        That dictionary.
    """
    config = task.configure_optimizers()
    assert isinstance(config, dict), type(config)
    return cast(dict[str, Any], config)
