"""Checkpoints of timm-style ViTs: DinoV2, MAE and ExPLoRA RGB releases.

.. versionadded:: 0.1
"""

from collections.abc import Mapping

from timm.models import adapt_input_conv
from timm.models.vision_transformer import checkpoint_filter_fn as timm_vit_filter
from torch import Tensor, nn

from ..checkpoints import (
    StateDict,
    drop_mismatched_head,
    fit_pos_embed,
    normalize_vit_keys,
    unwrap_state_dict,
)
from ..pos_embed import resample_pos_embed

__all__ = ('convert_mae_decoder', 'convert_state_dict')


def convert_state_dict(checkpoint: Mapping[str, object], model: nn.Module) -> StateDict:
    """Convert any supported checkpoint to *model*'s timm names and shapes.

    The position table is resampled to the model's grid by the model's
    ``pos_embed_resample`` rule (timm's for models without one, see
    :func:`~explora_geo.models.checkpoints.fit_pos_embed`), the patch embedding
    to its patch size (timm's filter); a different number of input channels is
    adapted with timm's ``adapt_input_conv``; a classifier head whose shape
    differs from the model's is dropped.

    Args:
        checkpoint: A file's top-level mapping or a bare state dict.
        model: The timm ViT to load into.

    Returns:
        A state dict for ``model.load_state_dict``.
    """
    state_dict = normalize_vit_keys(unwrap_state_dict(checkpoint))
    pos_embed = state_dict.pop('pos_embed', None)
    state_dict = timm_vit_filter(state_dict, model)  # type: ignore[arg-type]
    if pos_embed is not None:
        state_dict['pos_embed'] = fit_pos_embed(pos_embed, model)
    target = model.state_dict()
    key = 'patch_embed.proj.weight'
    if key in state_dict and key in target:
        in_chans = target[key].shape[1]
        if state_dict[key].shape[1] != in_chans:
            state_dict[key] = adapt_input_conv(
                in_chans, state_dict[key], state_dict[key].shape[1]
            )
    return drop_mismatched_head(state_dict, model)


def convert_mae_decoder(
    state_dict: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> StateDict:
    """Fit the decoder of an MAE pixel checkpoint to a model's decoder.

    Position tables of another grid are resampled as MAE resamples position
    tables (``'mae'``: bicubic, no antialiasing).

    Args:
        state_dict: ``decoder_*`` and ``mask_token`` tensors.
        own: The model's state dict.

    Returns:
        Tensors keyed like the model's decoder.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        if (
            key.endswith('pos_embed')
            and key in own
            and value.ndim == 3
            and own[key].shape[-1] == value.shape[-1]
            and own[key].shape[1] != value.shape[1]
        ):
            grid = round((own[key].shape[1] - 1) ** 0.5)
            out[key] = resample_pos_embed(value, grid, rule='mae')
    return out
