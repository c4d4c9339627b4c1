"""Checkpoints of SatMAE's group-channel and temporal models.

Accepted: SatMAE's MAE pre-training and classifier checkpoints, ExPLoRA's
multispectral releases (encoder-only, or full with split ``q_proj/k_proj/
v_proj`` and stale ``lora_A/lora_B``, which are dropped), explora_geo exports,
and plain RGB ViT/MAE checkpoints, whose per-group embeddings or narrower
position tables do not exist (ExPLoRA trains those from scratch).

.. versionadded:: 0.1
"""

from collections.abc import Mapping

from torch import Tensor, nn

from ..checkpoints import (
    StateDict,
    drop_mismatched_head,
    fit_pos_embed,
    normalize_decoder_keys,
    normalize_vit_keys,
    unwrap_state_dict,
)
from .vit import convert_mae_decoder

__all__ = (
    'convert_group_decoder',
    'convert_group_state_dict',
    'convert_temporal_decoder',
    'convert_temporal_state_dict',
    'encoder_state_dict',
    'fit_pooling_keys',
)

# Model keys that a checkpoint may lack because the model adds them on top of
# what the checkpoint was trained with; they keep their initial values.
_FRESH = ('channel_cls_embed', 'fc_norm.')
# An RGB ViT checkpoint has no per-group embeddings or encodings.
_FRESH_FROM_RGB = ('patch_embed.', 'pos_embed', 'channel_embed')


def encoder_state_dict(checkpoint: Mapping[str, object]) -> StateDict:
    """Unwrap a checkpoint and normalise its encoder keys, keeping a classifier head.

    :func:`~explora_geo.models.checkpoints.normalize_vit_keys` drops heads (of
    self-supervised checkpoints); a fine-tuned SatMAE classifier's ``head`` is
    kept here so that it can be loaded.

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.

    Returns:
        Encoder tensors with timm names (decoder, mask token, split
        projections and LoRA factors removed), plus ``head.*`` if present.
    """
    raw = unwrap_state_dict(checkpoint)
    sd = normalize_vit_keys(raw)
    sd.update({k: v for k, v in raw.items() if k in ('head.weight', 'head.bias')})
    return sd


def fit_pooling_keys(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Reconcile a checkpoint's final norm and head with *model*'s pooling.

    SatMAE's classifiers pool either the class token (final ``norm``) or the
    mean of the patch tokens (``fc_norm`` after pooling, the final norm
    removed). A pre-trained encoder (``norm``, no head) fits both: for average
    pooling its ``norm`` is dropped and ``fc_norm`` starts fresh, as SatMAE's
    fine-tuning does. A head whose shape differs from the model's is dropped.

    Args:
        state_dict: Converted tensors.
        model: The timm ViT to load into.

    Returns:
        The reconciled tensors.

    Raises:
        ValueError: If the checkpoint is a classifier trained with the other
            pooling (the message says which ``global_pool`` to build).
    """
    sd = dict(state_dict)
    has_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    has_norm = not isinstance(model.norm, nn.Identity)
    if any(k.startswith('fc_norm.') for k in sd) and not has_fc_norm:
        raise ValueError(
            'checkpoint was trained with average pooling (it has fc_norm); build the '
            "model with global_pool='avg'"
        )
    if any(k.startswith('norm.') for k in sd) and not has_norm:
        if 'head.weight' in sd:
            raise ValueError(
                'checkpoint is a classifier that pools the class token (it has norm and '
                "a head); build the model with global_pool='token'"
            )
        sd = {k: v for k, v in sd.items() if not k.startswith('norm.')}
    return drop_mismatched_head(sd, model)


def _fill_fresh(sd: StateDict, model: nn.Module, fresh: tuple[str, ...]) -> StateDict:
    for key, value in model.state_dict().items():
        if key not in sd and key.startswith(fresh):
            sd[key] = value
    return sd


def convert_group_state_dict(
    checkpoint: Mapping[str, object], model: nn.Module
) -> StateDict:
    """Convert a checkpoint to a group-channel ViT's keys and shapes.

    Keys the checkpoint cannot provide (``channel_cls_embed``, a fresh
    ``fc_norm``, and for RGB sources the embeddings and encodings) are filled
    with the model's current values, so the result loads strictly. A grid of
    another size is resampled by the model's ``pos_embed_resample`` rule
    (``'mae'``: bicubic without antialiasing, as SatMAE's
    ``interpolate_pos_embed``).

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.
        model: The :class:`~explora_geo.models.GroupChannelViT` to load into.

    Returns:
        A complete state dict for ``model.load_state_dict`` (the head is left
        out when its shape differs).

    Raises:
        ValueError: If the checkpoint's pooling cannot fit the model's.
    """
    sd = encoder_state_dict(checkpoint)
    fresh: tuple[str, ...] = _FRESH
    if 'patch_embed.proj.weight' in sd:  # an RGB ViT: single patch embedding
        for key in ('patch_embed.proj.weight', 'patch_embed.proj.bias', 'pos_embed'):
            sd.pop(key, None)
        fresh = _FRESH + _FRESH_FROM_RGB
    sd = fit_pooling_keys(sd, model)
    if 'pos_embed' in sd:
        sd['pos_embed'] = fit_pos_embed(sd['pos_embed'], model)
    return _fill_fresh(sd, model, fresh)


def convert_temporal_state_dict(
    checkpoint: Mapping[str, object], model: nn.Module
) -> StateDict:
    """Convert a checkpoint to a temporal ViT's keys and shapes.

    An RGB ViT/MAE checkpoint's shared patch embedding fits as it is; its
    position table (full width, no room for the time encodings) is not taken,
    the model's sin-cos table stays. A grid of another size is resampled by
    the model's ``pos_embed_resample`` rule. Average-pooling models get a fresh
    ``fc_norm`` (see :func:`fit_pooling_keys`).

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.
        model: The :class:`~explora_geo.models.TemporalViT` to load into.

    Returns:
        A complete state dict (the head is left out when its shape differs).
    """
    sd = fit_pooling_keys(encoder_state_dict(checkpoint), model)
    pos = sd.get('pos_embed')
    if pos is not None and pos.shape[-1] != model.state_dict()['pos_embed'].shape[-1]:
        del sd['pos_embed']  # an RGB ViT's table: no time encodings
    elif pos is not None:
        sd['pos_embed'] = fit_pos_embed(pos, model)
    return _fill_fresh(sd, model, ('pos_embed', 'fc_norm.'))


def convert_group_decoder(
    state_dict: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> StateDict:
    """Fit source decoder tensors to a group-channel MAE's decoder.

    An RGB MAE decoder provides everything but the prediction heads, which
    keep their initial values (trained from scratch, as ExPLoRA does); the
    fixed sin-cos tables of another size stay the model's.

    Args:
        state_dict: ``decoder_*`` and ``mask_token`` tensors.
        own: The model's state dict.

    Returns:
        Tensors keyed like the model's decoder.
    """
    out = normalize_decoder_keys(state_dict)
    if 'decoder_pred.weight' in out:  # RGB MAE: one pixel head
        del out['decoder_pred.weight']
        out.pop('decoder_pred.bias', None)
        out.update({k: v for k, v in own.items() if k.startswith('decoder_pred.')})
    for key in ('decoder_pos_embed', 'decoder_channel_embed'):
        if key not in out or out[key].shape != own[key].shape:
            out[key] = own[key]
    return out


def convert_temporal_decoder(
    state_dict: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> StateDict:
    """Fit source decoder tensors to a temporal MAE's decoder.

    A position table of another width (an RGB MAE's) stays the model's; one of
    the same width and another grid is resampled (``'mae'`` rule), as are the
    tables of :func:`~explora_geo.models.convert.vit.convert_mae_decoder`.

    Args:
        state_dict: The source's ``decoder_*`` tensors and its mask token.
        own: This temporal MAE's state dict.

    Returns:
        The decoder tensors to load.
    """
    out = normalize_decoder_keys(state_dict)
    table = out.get('decoder_pos_embed')
    if table is None or table.shape[-1] != own['decoder_pos_embed'].shape[-1]:
        out['decoder_pos_embed'] = own['decoder_pos_embed']
    return convert_mae_decoder(out, own)
