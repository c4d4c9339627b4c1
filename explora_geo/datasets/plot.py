"""Plotting of RGB image samples: classification labels and detection boxes."""

from collections.abc import Sequence
from typing import cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor
from torchgeo.datasets import RGBBandsMissingError
from torchgeo.datasets.utils import Sample


def rgb_for_plot(image: Tensor, scale: float = 255) -> np.ndarray:
    """Turn an RGB image tensor into an array for matplotlib.

    Args:
        image: Image of shape (3, H, W), channels in R, G, B order.
        scale: Value that maps to full brightness.

    Returns:
        Array of shape (H, W, 3) with values in [0, 1].

    Raises:
        RGBBandsMissingError: If the image does not have exactly three channels.

    .. versionadded:: 0.1
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise RGBBandsMissingError()
    array: np.ndarray = image.detach().cpu().float().permute(1, 2, 0).numpy()
    return np.clip(array / scale, 0, 1)


def plot_classification(
    classes: Sequence[str] | None,
    sample: Sample,
    show_titles: bool = True,
    suptitle: str | None = None,
    scale: float = 255,
) -> Figure:
    """Plot an RGB classification sample, with its label and prediction.

    Args:
        classes: Class names, indexed by label; None for unlabeled samples.
        sample: A sample with an ``'image'`` (3, H, W) in R, G, B order and
            optionally ``'label'`` and ``'prediction'``.
        show_titles: Flag indicating whether to show the label as a title.
        suptitle: Optional string to use as a suptitle.
        scale: Image value that maps to full brightness.

    Returns:
        A matplotlib Figure with the rendered sample.

    Raises:
        RGBBandsMissingError: If the image is not a three-channel RGB image.

    .. versionadded:: 0.1
    """
    image = rgb_for_plot(sample['image'], scale)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image)
    ax.axis('off')
    if show_titles and classes is not None and 'label' in sample:
        title = f'Label: {classes[cast(int, sample["label"].item())]}'
        if 'prediction' in sample:
            prediction = classes[cast(int, sample['prediction'].item())]
            title += f'\nPrediction: {prediction}'
        ax.set_title(title)
    if suptitle is not None:
        fig.suptitle(suptitle)
    return fig


def plot_detection(
    sample: Sample,
    show_titles: bool = True,
    suptitle: str | None = None,
    scale: float = 255,
) -> Figure:
    """Plot an RGB detection sample with its boxes and predicted boxes.

    Args:
        sample: A sample with an ``'image'`` (3, H, W) in R, G, B order and
            optionally ``'bbox_xyxy'`` and ``'prediction_bbox_xyxy'`` (N, 4).
        show_titles: Flag indicating whether to show the box counts as titles.
        suptitle: Optional string to use as a suptitle.
        scale: Image value that maps to full brightness.

    Returns:
        A matplotlib Figure: the ground truth, and the prediction if present.

    Raises:
        RGBBandsMissingError: If the image is not a three-channel RGB image.

    .. versionadded:: 0.1
    """
    image = rgb_for_plot(sample['image'], scale)
    panels = [('bbox_xyxy', 'Ground truth', 'yellow')]
    if 'prediction_bbox_xyxy' in sample:
        panels.append(('prediction_bbox_xyxy', 'Prediction', 'cyan'))
    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (key, title, color) in zip(axs[0], panels, strict=True):
        ax.imshow(image)
        ax.axis('off')
        boxes = sample.get(key)
        count = 0 if boxes is None else len(boxes)
        for x1, y1, x2, y2 in [] if boxes is None else boxes.tolist():
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=1)
            )
        if show_titles:
            ax.set_title(f'{title}: {count} boxes')
    if suptitle is not None:
        fig.suptitle(suptitle)
    return fig
