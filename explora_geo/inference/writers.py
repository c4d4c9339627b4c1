"""Atomic writers for prediction rasters (GeoTIFF / COG) and their polygons.

Every output is written to a hidden temporary file next to its destination
and renamed into place only when complete, so a failed or interrupted run
never leaves a partial file where a finished one is expected.

.. versionadded:: 0.1
"""

import contextlib
import glob
import importlib.util
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import shapely
from rasterio.features import shapes
from rasterio.windows import Window

__all__ = (
    'VECTOR_DRIVERS',
    'atomic_path',
    'check_vector_path',
    'cog_copy',
    'polygonize',
    'write_vectors',
)

#: Vector formats by file suffix (GeoParquet is written by geopandas itself).
VECTOR_DRIVERS = {
    '.gpkg': 'GPKG',
    '.geojson': 'GeoJSON',
    '.fgb': 'FlatGeobuf',
    '.parquet': 'GeoParquet',
    '.geoparquet': 'GeoParquet',
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path that becomes *path* when the block finishes without error.

    The temporary file lives in the destination folder (so the final rename
    is atomic) and keeps *path*'s suffix (drivers pick formats by suffix). On
    any error it is deleted and *path* is left untouched.

    Args:
        path: The destination file.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f'.{path.stem}.', suffix=f'.tmp{path.suffix}'
    )
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # drivers create the file themselves
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        # Sidecars some drivers leave behind (aux.xml, GPKG journals).
        for extra in tmp.parent.glob(f'{glob.escape(tmp.name)}*'):
            extra.unlink(missing_ok=True)


def cog_copy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], resampling: str
) -> None:
    """Convert a GeoTIFF into a Cloud Optimized GeoTIFF with GDAL's COG driver.

    Args:
        src: A finished GeoTIFF.
        dst: The COG to write.
        resampling: Overview resampling (``'NEAREST'`` for class maps,
            ``'AVERAGE'`` for scores).
    """
    rasterio.shutil.copy(
        str(src),
        str(dst),
        driver='COG',
        compress='DEFLATE',
        resampling=resampling,
        overviews='AUTO',
    )


def polygonize(
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    block_rows: int = 4096,
) -> gpd.GeoDataFrame:
    """Polygons of the classes of a one-band class raster, read in row blocks.

    Each block is polygonized (4-connectivity) in pixel coordinates, which
    are exact integers, so pieces of one region split by a block boundary
    are merged exactly afterwards; the raster's transform is applied last.
    Nodata pixels produce no polygons.

    Args:
        path: A one-band integer raster with a nodata value.
        labels: Class names, by class index, for a ``label`` column.
        block_rows: Rows read and polygonized at a time.

    Returns:
        Columns ``class`` (and ``label``) and ``geometry``, in the raster's CRS.

    Raises:
        ValueError: If the raster has more than one band.
    """
    frames = []
    with rasterio.open(path) as src:
        if src.count != 1:
            raise ValueError(
                f'{path}: polygons need a one-band class raster, it has {src.count} bands'
            )
        nodata = src.nodata
        transform, crs, height, width = src.transform, src.crs, src.height, src.width
        for top in range(0, height, block_rows):
            rows = min(block_rows, height - top)
            data = src.read(1, window=Window(0, top, width, rows))
            mask = None if nodata is None else data != nodata
            pixel = rasterio.Affine.translation(0, top)
            for geometry, value in shapes(data, mask=mask, transform=pixel):
                frames.append((int(value), shapely.geometry.shape(geometry)))
    classes = np.array([c for c, _ in frames], dtype=np.int64)
    geometries = np.array([g for _, g in frames], dtype=object)
    boundaries = [
        shapely.LineString([(0, top), (width, top)])
        for top in range(block_rows, height, block_rows)
    ]
    if boundaries and len(geometries):
        # Regions cut by a block boundary: union per class, then split into
        # connected parts again.
        cut = shapely.intersects(geometries, shapely.MultiLineString(boundaries))
        merged_classes, merged = [], []
        for value in np.unique(classes[cut]):
            union = shapely.union_all(geometries[cut & (classes == value)])
            parts = shapely.get_parts(union)
            merged += list(parts)
            merged_classes += [value] * len(parts)
        classes = np.concatenate([classes[~cut], np.array(merged_classes, np.int64)])
        geometries = np.concatenate([geometries[~cut], np.array(merged, object)])
    a, b, c, d, e, f = transform[:6]

    def to_world(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    geometries = shapely.transform(geometries, to_world)
    columns: dict[str, Any] = {'class': classes}
    if labels is not None:
        columns['label'] = np.array(
            [labels[v] if 0 <= v < len(labels) else str(v) for v in classes],
            dtype=object,
        )
    return gpd.GeoDataFrame(columns, geometry=list(geometries), crs=crs)


def check_vector_path(path: str | os.PathLike[str]) -> str:
    """The driver for *path*, failing early on formats that cannot be written.

    Args:
        path: The destination.

    Returns:
        The driver name (``'GeoParquet'`` for geopandas' own writer).

    Raises:
        ValueError: If the suffix is not a supported vector format.
        ImportError: If GeoParquet is requested without pyarrow.
    """
    path = Path(path)
    driver = VECTOR_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise ValueError(
            f'{path}: unsupported vector format {path.suffix!r}; use one of '
            f'{sorted(VECTOR_DRIVERS)}'
        )
    if driver == 'GeoParquet' and importlib.util.find_spec('pyarrow') is None:
        raise ImportError(
            f'{path}: writing GeoParquet needs pyarrow (pip install pyarrow)'
        )
    return driver


def write_vectors(frame: gpd.GeoDataFrame, path: str | os.PathLike[str]) -> Path:
    """Write polygons atomically; the format follows the suffix.

    Args:
        frame: The polygons.
        path: ``.gpkg``, ``.geojson``, ``.fgb``, ``.parquet`` or ``.geoparquet``.

    Returns:
        *path*.

    Raises:
        ValueError: If the suffix is not a supported vector format.
        ImportError: If GeoParquet is requested without pyarrow.
    """
    path = Path(path)
    driver = check_vector_path(path)
    with atomic_path(path) as tmp:
        if driver == 'GeoParquet':
            frame.to_parquet(tmp)
        elif driver == 'GPKG':
            # The layer is named after the destination, not the temporary file.
            frame.to_file(tmp, driver=driver, layer=path.stem)
        else:
            frame.to_file(tmp, driver=driver)
    return path
