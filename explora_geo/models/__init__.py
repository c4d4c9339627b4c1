"""ViT backbones (registered with timm), masked autoencoders, checkpoints and weights.

Modules, one job each:

* :mod:`.vit`: :class:`SourceViT` (timm's ViT resampling positions by its
  source's rule) and the block loop :func:`~.vit.encode_tokens`;
* :mod:`.pos_embed`: sin-cos tables and position-table resampling;
* :mod:`.satmae_bands`, :mod:`.group_patch_embed`, :mod:`.satmae_vit`,
  :mod:`.satmae_group`, :mod:`.satmae_temporal`: SatMAE's bands, group patch
  embedding, shared ViT base, group-channel and temporal ViTs;
* :mod:`.mae`: the masked-autoencoder template and the RGB MAE;
  :mod:`.satmae_group_mae`, :mod:`.satmae_temporal_mae`: SatMAE's MAEs;
* :mod:`.checkpoints`: reading files, shared key rules, the strict loader;
  :mod:`.convert`: conversion per source layout;
* :mod:`.weights`: the published weights, :func:`resolve_weights`,
  :func:`load_weights`, :func:`create_model`;
* :mod:`.catalog`: every registered model name (imported here, so importing
  the package registers them).
"""

from . import catalog as catalog
from . import mae as mae
from . import satmae_group as satmae_group
from . import satmae_temporal as satmae_temporal
from . import vit as vit
from . import weights as weights
from .checkpoints import load_into, read_checkpoint
from .convert import (
    convert_group_state_dict,
    convert_state_dict,
    convert_temporal_state_dict,
)
from .group_patch_embed import GroupPatchEmbed
from .mae import MAEOutput, MaskedAutoencoder, create_mae, register_mae
from .pos_embed import resample_pos_embed
from .satmae_bands import SATMAE_BANDS, SATMAE_GROUPS, SENTINEL2_BANDS
from .satmae_group import GroupChannelViT
from .satmae_group_mae import GroupChannelMAE
from .satmae_temporal import TemporalViT, time_encoding
from .satmae_temporal_mae import TemporalMAE
from .vit import SourceViT
from .weights import *  # noqa: F403 (re-exported: weights.__all__)

__all__ = (
    'SATMAE_BANDS',
    'SATMAE_GROUPS',
    'SENTINEL2_BANDS',
    'GroupChannelMAE',
    'GroupChannelViT',
    'GroupPatchEmbed',
    'MAEOutput',
    'MaskedAutoencoder',
    'SourceViT',
    'TemporalMAE',
    'TemporalViT',
    'convert_group_state_dict',
    'convert_state_dict',
    'convert_temporal_state_dict',
    'create_mae',
    'load_into',
    'read_checkpoint',
    'register_mae',
    'resample_pos_embed',
    'time_encoding',
    *weights.__all__,
)
