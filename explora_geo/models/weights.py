"""Published weights: ExPLoRA releases and the source DinoV2 / MAE checkpoints.

Each enum lists the weights of one architecture, with URL and metadata, in the
style of TorchGeo's and torchvision's ``WeightsEnum``. ``get_state_dict``
returns tensors already renamed to timm's ViT keys, so
``torchgeo.tasks.Classification(model='explora_vitl_dino', weights=...)`` can
load them directly. :func:`load_weights` is the one entry point that also
accepts a local path, ``True`` (the model's default pretrained weights) or an
enum name.

.. versionadded:: 0.1
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn
from torch.hub import load_state_dict_from_url
from torchgeo.models import get_weight as torchgeo_get_weight
from torchvision.models._api import Weights, WeightsEnum

from .checkpoints import (
    convert_state_dict,
    load_into,
    normalize_vit_keys,
    read_checkpoint,
    unwrap_state_dict,
)

__all__ = (
    'ExPLoRAViTB14DINOv2Weights',
    'ExPLoRAViTB16MAEWeights',
    'ExPLoRAViTG14DINOv2Weights',
    'ExPLoRAViTL14DINOv2Weights',
    'ExPLoRAViTL16MAEWeights',
    'ExPLoRAWeightsEnum',
    'get_weight',
    'load_weights',
)

_HF = 'https://huggingface.co/samarkhanna/ExPLoRA/resolve/main'
_DINOV2 = 'https://dl.fbaipublicfiles.com/dinov2'
_MAE = 'https://dl.fbaipublicfiles.com/mae'
_PAPER = 'https://arxiv.org/abs/2406.10973'

_rgb_transforms = K.AugmentationSequential(
    K.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD), data_keys=None
)


class ExPLoRAWeightsEnum(WeightsEnum):
    """Base of this package's weight enums: ``get_state_dict`` returns timm ViT keys.

    .. versionadded:: 0.1
    """

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Download (or read from the hub cache) and convert the checkpoint.

        Args:
            *args: Passed to :func:`torch.hub.load_state_dict_from_url`.
            **kwargs: Passed to :func:`torch.hub.load_state_dict_from_url`
                (``weights_only`` is forced on).

        Returns:
            The encoder's tensors with timm names (not yet resampled to a model).
        """
        kwargs['weights_only'] = True
        kwargs.pop('check_hash', None)  # the release file names carry no hash
        checkpoint = load_state_dict_from_url(self.url, *args, **kwargs)
        return normalize_vit_keys(unwrap_state_dict(checkpoint))


def _meta(model: str, dataset: str, **extra: Any) -> dict[str, Any]:
    return {
        'model': model,
        'dataset': dataset,
        'in_chans': 3,
        'publication': _PAPER,
        **extra,
    }


class ExPLoRAViTL14DINOv2Weights(ExPLoRAWeightsEnum):
    """ViT-L/14 weights: ExPLoRA D-[L]-r64 on fMoW-RGB, and its DinoV2 source.

    .. versionadded:: 0.1
    """

    FMOW_RGB = Weights(
        url=f'{_HF}/explora_dinov2_fmow_rgb/explora_dinov2_vit_large_fmow_rgb_encoder_only.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitl_dino', 'fMoW-RGB', img_size=224, layout='encoder'),
    )
    FMOW_RGB_TEACHER = Weights(
        url=f'{_HF}/explora_dinov2_fmow_rgb/explora_dinov2_vit_large_fmow_rgb.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitl_dino', 'fMoW-RGB', img_size=224, layout='teacher'),
    )
    DINOV2_LVD142M = Weights(
        url=f'{_DINOV2}/dinov2_vitl14/dinov2_vitl14_pretrain.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitl_dino', 'LVD-142M', img_size=518, layout='dinov2'),
    )


class ExPLoRAViTB14DINOv2Weights(ExPLoRAWeightsEnum):
    """ViT-B/14 weights: ExPLoRA on fMoW-RGB, and its DinoV2 source.

    .. versionadded:: 0.1
    """

    FMOW_RGB = Weights(
        url=f'{_HF}/explora_dinov2_fmow_rgb/explora_dinov2_vit_base_fmow_rgb_encoder_only.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitb_dino', 'fMoW-RGB', img_size=224, layout='encoder'),
    )
    FMOW_RGB_TEACHER = Weights(
        url=f'{_HF}/explora_dinov2_fmow_rgb/explora_dinov2_vit_base_fmow_rgb.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitb_dino', 'fMoW-RGB', img_size=224, layout='teacher'),
    )
    DINOV2_LVD142M = Weights(
        url=f'{_DINOV2}/dinov2_vitb14/dinov2_vitb14_pretrain.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitb_dino', 'LVD-142M', img_size=518, layout='dinov2'),
    )


class ExPLoRAViTG14DINOv2Weights(ExPLoRAWeightsEnum):
    """ViT-g/14 DinoV2 source weights.

    .. versionadded:: 0.1
    """

    DINOV2_LVD142M = Weights(
        url=f'{_DINOV2}/dinov2_vitg14/dinov2_vitg14_pretrain.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitg_dino', 'LVD-142M', img_size=518, layout='dinov2'),
    )


class ExPLoRAViTL16MAEWeights(ExPLoRAWeightsEnum):
    """ViT-L/16 MAE source weights (encoder only, and encoder + pixel decoder).

    .. versionadded:: 0.1
    """

    MAE_IN1K = Weights(
        url=f'{_MAE}/pretrain/mae_pretrain_vit_large.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitl_mae', 'ImageNet-1k', img_size=224, layout='mae'),
    )
    MAE_IN1K_PIXEL = Weights(
        url=f'{_MAE}/visualize/mae_visualize_vit_large.pth',
        transforms=_rgb_transforms,
        meta=_meta(
            'explora_vitl_mae', 'ImageNet-1k', img_size=224, layout='mae+decoder'
        ),
    )


class ExPLoRAViTB16MAEWeights(ExPLoRAWeightsEnum):
    """ViT-B/16 MAE source weights (encoder only, and encoder + pixel decoder).

    .. versionadded:: 0.1
    """

    MAE_IN1K = Weights(
        url=f'{_MAE}/pretrain/mae_pretrain_vit_base.pth',
        transforms=_rgb_transforms,
        meta=_meta('explora_vitb_mae', 'ImageNet-1k', img_size=224, layout='mae'),
    )
    MAE_IN1K_PIXEL = Weights(
        url=f'{_MAE}/visualize/mae_visualize_vit_base.pth',
        transforms=_rgb_transforms,
        meta=_meta(
            'explora_vitb_mae', 'ImageNet-1k', img_size=224, layout='mae+decoder'
        ),
    )


#: Every enum of this package, searched by :func:`get_weight`.
WEIGHT_ENUMS: list[type[WeightsEnum]] = [
    ExPLoRAViTL14DINOv2Weights,
    ExPLoRAViTB14DINOv2Weights,
    ExPLoRAViTG14DINOv2Weights,
    ExPLoRAViTL16MAEWeights,
    ExPLoRAViTB16MAEWeights,
]


def get_weight(name: str) -> WeightsEnum:
    """Look up weights by their full name, e.g. ``'ExPLoRAViTL14DINOv2Weights.FMOW_RGB'``.

    Falls back to TorchGeo's registry for TorchGeo's own weights.

    Args:
        name: ``EnumName.MEMBER``.

    Returns:
        The weights.

    Raises:
        ValueError: If no enum has such a member.
    """
    for enum in WEIGHT_ENUMS:
        for member in enum:
            if str(member) == name:
                return member
    try:
        return torchgeo_get_weight(name)
    except ValueError:
        known = [str(m) for e in WEIGHT_ENUMS for m in e]
        raise ValueError(
            f'{name!r} is neither a file nor known weights; known: {known}'
        ) from None


def convert_for(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Convert *checkpoint* for *model*: its own ``convert_checkpoint`` if it has one.

    Models whose keys differ from timm's ViT (the SatMAE group-channel and
    temporal ViTs) define ``convert_checkpoint``; others use
    :func:`~explora_geo.models.checkpoints.convert_state_dict`.

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.
        model: The model to load into.

    Returns:
        A state dict for ``model.load_state_dict``.
    """
    own = getattr(model, 'convert_checkpoint', None)
    if callable(own):
        converted: dict[str, Tensor] = own(checkpoint)
        return converted
    return convert_state_dict(checkpoint, model)


def load_weights(
    model: nn.Module, weights: WeightsEnum | str | os.PathLike[str] | bool | None
) -> nn.Module:
    """Load weights into a timm ViT, converting any supported checkpoint format.

    Args:
        model: The model (built with the architecture the weights are for).
        weights: An enum member; a local path (``.pth``, ``.ckpt``,
            ``.safetensors``); the name of an enum member; ``True`` for the
            model's default pretrained weights (its ``pretrained_cfg`` URL);
            ``None``/``False`` to leave the model as it is.

    Returns:
        *model*.

    Raises:
        ValueError: If *weights* is ``True`` but the model has no pretrained URL.
        KeyError: If the checkpoint's keys do not fit the model (lists both sides).
    """
    if weights is None or weights is False:
        return model
    if weights is True:
        cfg = getattr(model, 'pretrained_cfg', {}) or {}
        url = cfg.get('url')
        if not url:
            raise ValueError(
                f'{type(model).__name__} ({cfg.get("architecture")}) has no default '
                'pretrained weights URL; pass an enum member or a path'
            )
        source = url
        checkpoint: Any = load_state_dict_from_url(
            url, map_location='cpu', weights_only=True
        )
    elif isinstance(weights, WeightsEnum):
        source = str(weights)
        checkpoint = weights.get_state_dict(progress=True)
    elif Path(weights).exists():
        source = str(weights)
        checkpoint = read_checkpoint(weights)
    else:
        source = str(weights)
        checkpoint = get_weight(str(weights)).get_state_dict(progress=True)
    state_dict = convert_for(checkpoint, model)
    load_into(model, state_dict, source=source)
    return model


def create_model(
    name: str,
    weights: WeightsEnum | str | os.PathLike[str] | bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model with :func:`timm.create_model` and load *weights*.

    Args:
        name: timm model name (e.g. ``'explora_vitl_dino'``).
        weights: See :func:`load_weights`.
        **kwargs: Passed to :func:`timm.create_model` (``num_classes``,
            ``in_chans``, ``img_size``, ...).

    Returns:
        The model.
    """
    model = timm.create_model(name, pretrained=False, **kwargs)
    return load_weights(model, weights)
