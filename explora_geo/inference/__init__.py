"""Tiled prediction over large rasters and its GeoTIFF / vector writers."""

from .tiles import (
    RasterPrediction,
    TileGrid,
    blend_weights,
    predict_raster,
    resolve_bands,
)
from .writers import atomic_path, polygonize, write_vectors

__all__ = (
    'RasterPrediction',
    'TileGrid',
    'atomic_path',
    'blend_weights',
    'polygonize',
    'predict_raster',
    'resolve_bands',
    'write_vectors',
)
