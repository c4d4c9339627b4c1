"""Plotting of RGB image samples: classification labels or detection boxes."""

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


def plot_rgb_sample(
    sample: Sample,
    classes: Sequence[str] | None = None,
    show_titles: bool = True,
    suptitle: str | None = None,
    scale: float = 255,
) -> Figure:
    """Plot an RGB sample: with its boxes, or with its class label.

    A sample with boxes (``'bbox_xyxy'``, (N, 4)) is drawn with them in one panel
    and, if present, with its predicted boxes (``'prediction_bbox_xyxy'``) in a
    second one, titled with the box counts. Any other sample is drawn in one
    panel titled with its ``'label'`` and ``'prediction'``, named by *classes*.

    Args:
        sample: A sample with an ``'image'`` (3, H, W) in R, G, B order.
        classes: Class names, indexed by label; None for unlabeled samples.
        show_titles: Flag indicating whether to show titles above each panel.
        suptitle: Optional string to use as a suptitle.
        scale: Image value that maps to full brightness.

    Returns:
        A matplotlib Figure with the rendered sample.

    Raises:
        RGBBandsMissingError: If the image is not a three-channel RGB image.

    .. versionadded:: 0.1
    """
    image = rgb_for_plot(sample['image'], scale)
    if 'bbox_xyxy' in sample:
        fig = _plot_boxes(image, sample, show_titles)
    else:
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


def _plot_boxes(image: np.ndarray, sample: Sample, show_titles: bool) -> Figure:
    """Draw an image with its boxes and, if present, with its predicted boxes.

    Args:
        image: The image, (H, W, 3) in [0, 1].
        sample: The sample, with ``'bbox_xyxy'`` and optionally
            ``'prediction_bbox_xyxy'`` (N, 4).
        show_titles: Flag indicating whether to show the box counts as titles.

    Returns:
        The figure: the ground truth, and the prediction if present.
    """
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
    return fig
