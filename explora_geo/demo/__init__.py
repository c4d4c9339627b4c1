"""``explora-geo demo``: the whole ExPLoRA pipeline on a real Sentinel-2 scene.

1. **Source model W_S** (:mod:`.source`). A small MAE ViT is pre-trained on
   natural-colour RGB aerial photographs (bundled NEON orthophotos): the
   stand-in for the natural-image MAE of the paper, since no weights can be
   downloaded here. With ``--weights`` the released MAE weights are used
   instead, at full size.
2. **ExPLoRA** (:func:`.stages.pretrain_explora`). The source blocks
   initialise a SatMAE group-channel MAE for the 13-band scene (B1, B9, B10
   dropped; groups RGB+NIR, red edge, SWIR); blocks 1 and L are unfrozen, the
   others get LoRA on Q and V, the per-group patch embeddings are trained from
   scratch, the decoder gets LoRA and trainable norms (M-[1,L]-r8, the paper's
   multispectral recipe at small size). MAE pre-training continues on
   unlabelled chips of the scene's training blocks; the merged encoder and
   the Δ_T file are exported.
3. **Compare** source and ExPLoRA representations on held-out chips (a
   quarter of the scene in blocks never seen in pre-training): masked
   reconstruction error and a linear probe on land-cover labels derived from
   standard spectral indices (:func:`.data.land_cover_labels`).
4. **Fine-tune** with LoRA from the source blocks and from the ExPLoRA
   encoder; each classifier is saved as a checkpoint that carries its bands,
   normalisation and classes.
5. **Predict** the land cover of the whole scene through the tiled
   prediction of ``explora-geo predict``: a Cloud-Optimised GeoTIFF and a
   GeoPackage of polygons in the scene's CRS.

Stages 2-4 repeat for each seed; the report (:mod:`.report`) gives every
seed's numbers and their mean and spread, and three figures.

.. versionadded:: 0.1
"""

from .config import CLASSES, DemoConfig
from .data import ChipGrid, land_cover_labels, read_scene, scene_path
from .pipeline import run_demo

__all__ = (
    'CLASSES',
    'ChipGrid',
    'DemoConfig',
    'land_cover_labels',
    'read_scene',
    'run_demo',
    'scene_path',
)
