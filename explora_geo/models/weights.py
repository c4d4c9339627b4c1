"""Published weights: ExPLoRA releases and the source DinoV2 / MAE / SatMAE checkpoints.

This module is the package's one registry of published weights. Each enum
lists the weights of one architecture, with URL and metadata, in the style of
TorchGeo's and torchvision's ``WeightsEnum``; :data:`WEIGHT_ENUMS` lists every
enum, and the timm ``pretrained_cfg`` of each registered model takes its URL
from here. ``get_state_dict`` returns tensors already renamed to timm's ViT
keys, so ``torchgeo.tasks.Classification(model='explora_vitl_dino',
weights=...)`` can load them directly.

:func:`resolve_weights` turns any ``weights=`` argument (an enum member, its
name, a local path, ``True`` for a model's default) into a checkpoint; it
serves :func:`load_weights` / :func:`create_model`,
:func:`~explora_geo.models.mae.create_mae` and the pre-training tasks.

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

from ..sensors import SENTINEL2
from .checkpoints import (
    load_into,
    normalize_vit_keys,
    read_checkpoint,
    unwrap_state_dict,
)
from .convert import convert_state_dict

__all__ = (
    'WEIGHT_ENUMS',
    'ExPLoRAViTB14DINOv2Weights',
    'ExPLoRAViTB16MAEWeights',
    'ExPLoRAViTG14DINOv2Weights',
    'ExPLoRAViTL8SatMAEGroupWeights',
    'ExPLoRAViTL14DINOv2Weights',
    'ExPLoRAViTL16MAEWeights',
    'ExPLoRAWeightsEnum',
    'SourceWeights',
    'create_model',
    'get_weight',
    'load_checkpoint',
    'load_weights',
    'resolve_weights',
)

#: What a ``weights=`` argument can be.
type SourceWeights = WeightsEnum | str | os.PathLike[str] | bool | None

_HF = 'https://huggingface.co/samarkhanna/ExPLoRA/resolve/main'
_DINOV2 = 'https://dl.fbaipublicfiles.com/dinov2'
_MAE = 'https://dl.fbaipublicfiles.com/mae'
_SATMAE = 'https://zenodo.org/record/7325339/files'
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
        return normalize_vit_keys(
            unwrap_state_dict(self.get_checkpoint(*args, **kwargs))
        )

    def get_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Download (or read from the hub cache) the whole checkpoint file.

        Args:
            *args: Passed to :func:`torch.hub.load_state_dict_from_url`.
            **kwargs: Passed to :func:`torch.hub.load_state_dict_from_url`
                (``weights_only`` is forced on).

        Returns:
            The file's top-level mapping, decoders and heads included.
        """
        return _download(self.url, *args, **kwargs)


def _download(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs['weights_only'] = True
    kwargs.setdefault('map_location', 'cpu')
    kwargs.pop('check_hash', None)  # the release file names carry no hash
    return dict(load_state_dict_from_url(url, *args, **kwargs))


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


#: SatMAE's Sentinel-2 normalisation of 13-band input: clip((x - (mu - 2 sd)) / (4 sd), 0, 1).
_sentinel_transforms = SENTINEL2.normalization('satmae')


def _sentinel_meta(**extra: Any) -> dict[str, Any]:
    return {
        'model': 'explora_vitl_satmae_group',
        'dataset': 'fMoW-Sentinel',
        'in_chans': len(SENTINEL2.bands),
        'bands': SENTINEL2.bands,
        'img_size': 96,
        'publication': _PAPER,
        **extra,
    }


class ExPLoRAViTL8SatMAEGroupWeights(ExPLoRAWeightsEnum):
    """Group-channel ViT-L/8 weights for 13-band Sentinel-2 (fMoW-Sentinel).

    ``FMOW_SENTINEL`` is ExPLoRA M-[1,L]-r32 (encoder only, LoRA merged);
    ``FMOW_SENTINEL_FULL`` the same run's full MAE checkpoint (its decoder and
    stale adapter tensors are dropped on load); ``SATMAE_FMOW_SENTINEL`` SatMAE's
    fully pre-trained MAE. ``get_state_dict`` returns SatMAE's key names; load
    them with :func:`load_weights` (or any loader that tolerates the fresh
    ``channel_cls_embed``/``fc_norm``, e.g. TorchGeo's tasks).

    .. versionadded:: 0.1
    """

    FMOW_SENTINEL = Weights(
        url=f'{_HF}/explora_mae_multispectral/explora_mae_fmow_sentinel_encoder_only.pth',
        transforms=_sentinel_transforms,
        meta=_sentinel_meta(layout='encoder'),
    )
    FMOW_SENTINEL_FULL = Weights(
        url=f'{_HF}/explora_mae_multispectral/explora_mae_fmow_sentinel.pth',
        transforms=_sentinel_transforms,
        meta=_sentinel_meta(layout='mae+decoder'),
    )
    SATMAE_FMOW_SENTINEL = Weights(
        url=f'{_SATMAE}/pretrain-vit-large-e199.pth',
        transforms=_sentinel_transforms,
        meta=_sentinel_meta(
            layout='satmae-mae', publication='https://arxiv.org/abs/2207.08051'
        ),
    )


#: Every enum of this package, searched by :func:`get_weight`.
WEIGHT_ENUMS: tuple[type[WeightsEnum], ...] = (
    ExPLoRAViTL14DINOv2Weights,
    ExPLoRAViTB14DINOv2Weights,
    ExPLoRAViTG14DINOv2Weights,
    ExPLoRAViTL16MAEWeights,
    ExPLoRAViTB16MAEWeights,
    ExPLoRAViTL8SatMAEGroupWeights,
)


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


def resolve_weights(
    weights: SourceWeights,
    default: WeightsEnum | str | None = None,
    *,
    whole: bool = False,
) -> tuple[dict[str, Any], str] | None:
    """Read the checkpoint a ``weights=`` argument names.

    Args:
        weights: An enum member; the name of one (``'Enum.MEMBER'``); a local
            path (``.pth``, ``.ckpt``, ``.safetensors``); ``True`` for
            *default*; ``None`` or ``False`` for none.
        default: What ``True`` means: an enum member or a URL (e.g. a model's
            ``pretrained_cfg['url']``).
        whole: For enum members, read the whole file (decoders, mask tokens,
            heads) instead of the encoder tensors ``get_state_dict`` gives.

    Returns:
        ``(checkpoint, source)``: the mapping and a description of where it came
        from (for error messages); ``None`` if there are no weights.

    Raises:
        ValueError: If *weights* is ``True`` without a default, or names
            neither a file nor known weights.
        TypeError: If *weights* is of another type.
    """
    if weights is None or weights is False:
        return None
    if weights is True:
        if not default:
            raise ValueError(
                'weights=True needs default pretrained weights, and this model has '
                'none; pass an enum member or a path'
            )
        if isinstance(default, str):
            return _download(default, progress=True), default
        weights = default
    if isinstance(weights, str | os.PathLike) and Path(weights).exists():
        return read_checkpoint(weights), str(weights)
    if isinstance(weights, str):
        weights = get_weight(weights)
    if not isinstance(weights, WeightsEnum):
        raise TypeError(
            f'weights must be an enum member, a name, a path or a bool, got {weights!r}'
        )
    if whole and isinstance(weights, ExPLoRAWeightsEnum):
        return weights.get_checkpoint(progress=True), str(weights)
    return dict(weights.get_state_dict(progress=True)), str(weights)


def convert_for(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Convert *checkpoint* for *model*: its own ``convert_checkpoint`` if it has one.

    Models whose keys differ from timm's ViT (the SatMAE group-channel and
    temporal ViTs) define ``convert_checkpoint``; others use
    :func:`~explora_geo.models.convert.convert_state_dict`.

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


def load_checkpoint(
    model: nn.Module, checkpoint: Mapping[str, Any], source: str = 'checkpoint'
) -> nn.Module:
    """Convert an already read checkpoint for *model* and load it strictly.

    Args:
        model: The model.
        checkpoint: A file's top-level mapping or a bare state dict, in any
            supported layout.
        source: Where it came from, for error messages.

    Returns:
        *model*.

    Raises:
        KeyError: If keys are missing or unexpected (both listed).
        ValueError: If a shape differs (the key is named).
    """
    load_into(model, convert_for(checkpoint, model), source=source)
    return model


def load_weights(model: nn.Module, weights: SourceWeights) -> nn.Module:
    """Load weights into a model, converting any supported checkpoint format.

    Args:
        model: The model (built with the architecture the weights are for).
        weights: See :func:`resolve_weights`; ``True`` means the model's
            default pretrained weights (its ``pretrained_cfg`` URL).

    Returns:
        *model*.

    Raises:
        ValueError: If *weights* is ``True`` but the model has no pretrained URL.
        KeyError: If the checkpoint's keys do not fit the model (lists both sides).
    """
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    resolved = resolve_weights(weights, cfg.get('url'))
    if resolved is None:
        return model
    return load_checkpoint(model, *resolved)


def create_model(
    name: str,
    weights: SourceWeights = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model with :func:`timm.create_model` and load *weights*.

    Args:
        name: timm model name (e.g. ``'explora_vitl_dino'``).
        weights: See :func:`resolve_weights`.
        **kwargs: Passed to :func:`timm.create_model` (``num_classes``,
            ``in_chans``, ``img_size``, ...).

    Returns:
        The model.
    """
    model = timm.create_model(name, pretrained=False, **kwargs)
    return load_weights(model, weights)
