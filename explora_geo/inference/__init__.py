"""Tiled prediction over large rasters and Sentinel-2 products, and its writers."""

from .allocator import tune_allocator
from .sources import RasterSource, open_source
from .tiles import (
    RasterPrediction,
    TileGrid,
    blend_weights,
    default_overlap,
    predict_raster,
    resolve_bands,
)
from .writers import atomic_path, grid_polygons, polygonize, write_vectors

__all__ = (
    'RasterPrediction',
    'RasterSource',
    'TileGrid',
    'atomic_path',
    'blend_weights',
    'default_overlap',
    'grid_polygons',
    'open_source',
    'polygonize',
    'predict_raster',
    'resolve_bands',
    'tune_allocator',
    'write_vectors',
)
