"""Checkpoint conversion, one module per source layout.

* :mod:`.vit`: timm ``VisionTransformer`` keys, from the DinoV2, MAE and
  ExPLoRA RGB releases, explora_geo exports and Lightning checkpoints; and the
  decoder of MAE's pixel checkpoints.
* :mod:`.satmae`: SatMAE's group-channel and temporal MAEs and classifiers,
  and ExPLoRA's multispectral releases.

The key rules all layouts share (unwrapping, fused ``qkv``, stale LoRA
factors, position-table resampling, strict loading) are in
:mod:`explora_geo.models.checkpoints`.

.. versionadded:: 0.1
"""

from .satmae import (
    convert_group_decoder,
    convert_group_state_dict,
    convert_temporal_decoder,
    convert_temporal_state_dict,
    fit_pooling_keys,
)
from .vit import convert_mae_decoder, convert_state_dict

__all__ = (
    'convert_group_decoder',
    'convert_group_state_dict',
    'convert_mae_decoder',
    'convert_state_dict',
    'convert_temporal_decoder',
    'convert_temporal_state_dict',
    'fit_pooling_keys',
)
