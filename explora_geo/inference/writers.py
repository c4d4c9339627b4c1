"""Atomic writers for prediction rasters (GeoTIFF / COG) and their polygons.

Every output is written to a hidden temporary file next to its destination
and renamed into place only when complete (:func:`explora_geo.atomic.atomic_path`),
so a failed or interrupted run never leaves a partial file where a finished
one is expected; a prediction being written keeps its finished rows in a
:class:`PartialOutput` for a rerun to continue.

.. versionadded:: 0.1
"""

import contextlib
import glob
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import shapely
from rasterio.features import shapes
from rasterio.windows import Window

from ..atomic import _alive, atomic_path, remove_stale

__all__ = (
    'COMPRESSIONS',
    'DEFAULT_LEVELS',
    'LEVELS',
    'VECTOR_DRIVERS',
    'PartialOutput',
    'atomic_path',
    'check_compression',
    'check_vector_path',
    'cog_copy',
    'final_copy',
    'grid_polygons',
    'polygonize',
    'remove_stale',
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


class PartialOutput:
    """An output raster being written, with the rows finished so far recorded.

    Next to ``NAME`` live ``.NAME.partial.tif`` (an uncompressed tiled GeoTIFF
    with the rows written so far), ``.NAME.progress.json`` (the run's
    signature and how many rows are final) and ``.NAME.lock`` (the id of the
    process writing them). A run with the same signature continues from the
    recorded row; any other run starts afresh. :meth:`commit` closes the file
    before recording progress, so a recorded row is on disk even if the
    process is killed right after.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        signature: Mapping[str, Any],
        profile: Mapping[str, Any],
        descriptions: Sequence[str],
        tags: Mapping[str, str],
        scale: float | None = None,
    ) -> None:
        """Initialize a new PartialOutput instance.

        Args:
            dest: The final output.
            signature: Everything that determines the output (JSON data).
            profile: rasterio creation profile of the raster.
            descriptions: Band descriptions.
            tags: Dataset tags.
            scale: Band scale (value of one unit) for scaled integer scores.
        """
        self.dest = Path(dest)
        parent, name = self.dest.parent, self.dest.name
        self.work = parent / f'.{name}.partial.tif'
        self.state = parent / f'.{name}.progress.json'
        self.lock = parent / f'.{name}.lock'
        self.signature = json.loads(json.dumps(signature))
        self.profile = dict(profile)
        self.descriptions, self.tags, self.scale = list(descriptions), tags, scale
        self.dst: Any = None
        self.rows_done = 0

    def open(self) -> int:
        """Take the lock and open the partial raster, resuming if it matches.

        Returns:
            Rows already final (0 for a fresh start).

        Raises:
            RuntimeError: If a live process writes the same output.
        """
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.lock.exists():
            try:
                pid = int(self.lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise RuntimeError(
                    f'{self.dest}: another run (process {pid}) is writing it; '
                    f'remove {self.lock} if that is wrong'
                )
        self.lock.write_text(str(os.getpid()))
        remove_stale(self.dest)
        state = None
        if self.state.exists() and self.work.exists():
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(self.state.read_text())
        if isinstance(state, dict) and state.get('signature') == self.signature:
            self.rows_done = int(state['rows_done'])
            self.dst = rasterio.open(self.work, 'r+')
            return self.rows_done
        self.discard()
        self.dst = rasterio.open(self.work, 'w', **self.profile)
        for i, text in enumerate(self.descriptions, start=1):
            self.dst.set_band_description(i, text)
        if self.scale is not None:
            self.dst.scales = [self.scale] * self.dst.count
        self.dst.update_tags(**self.tags)
        self.rows_done = 0
        return 0

    def write(self, data: np.ndarray, window: Window) -> None:
        """Write rows."""
        self.dst.write(data, window=window)

    def commit(self, rows_done: int, reopen: bool = True) -> None:
        """Record that the first *rows_done* rows are final (after flushing them).

        Args:
            rows_done: Rows written, from the top.
            reopen: Open the raster again for more rows; False after the last.
        """
        self.dst.close()
        text = json.dumps({'signature': self.signature, 'rows_done': rows_done})
        tmp = self.state.with_name(self.state.name + f'.{os.getpid()}')
        tmp.write_text(text)
        os.replace(tmp, self.state)
        self.rows_done = rows_done
        if reopen:
            self.dst = rasterio.open(self.work, 'r+')

    def close(self) -> None:
        """Close the raster (progress stays recorded for a later run)."""
        if self.dst is not None and not self.dst.closed:
            self.dst.close()

    def discard(self) -> None:
        """Delete the partial raster and its progress record."""
        self.close()
        for path in (self.work, self.state):
            path.unlink(missing_ok=True)
        for extra in self.work.parent.glob(f'{glob.escape(self.work.name)}*'):
            extra.unlink(missing_ok=True)

    def release(self) -> None:
        """Give up the lock."""
        with contextlib.suppress(OSError, ValueError):
            if int(self.lock.read_text().strip() or 0) == os.getpid():
                self.lock.unlink()


#: Compressions of the final raster, by their GDAL names.
COMPRESSIONS = {'deflate': 'DEFLATE', 'zstd': 'ZSTD', 'lzw': 'LZW', 'none': 'NONE'}

#: GDAL ``LEVEL`` of each compression that has levels, when none is given:
#: the fastest. The final copy runs after the last tile, so its time is the
#: whole run's: level 1 writes uint8 class scores about 3x faster than
#: GDAL's default DEFLATE level 6, in files about a quarter larger (float32
#: scores: 1.7x faster, 2 % larger; class maps: the same). benchmarks.md,
#: "Tiled raster prediction", has the figures.
DEFAULT_LEVELS = {'deflate': 1, 'zstd': 1}

#: The levels each compression accepts (DEFLATE's 10-12 are libdeflate's).
LEVELS = {'deflate': range(1, 13), 'zstd': range(1, 23)}


def check_compression(compress: str, level: int | None = None) -> None:
    """Raise a clear error for an unknown compression or a level it lacks.

    Args:
        compress: A key of :data:`COMPRESSIONS`.
        level: Its level, or None for :data:`DEFAULT_LEVELS`.

    Raises:
        ValueError: If *compress* is unknown, or *level* is given for a
            compression without levels or lies outside :data:`LEVELS`.
    """
    if compress not in COMPRESSIONS:
        raise ValueError(
            f'compress must be one of {sorted(COMPRESSIONS)}, got {compress!r}'
        )
    if level is None:
        return
    if compress not in LEVELS:
        raise ValueError(
            f'compress {compress!r} has no levels (got compress_level={level!r}); '
            f'levels exist for {sorted(LEVELS)}'
        )
    allowed = LEVELS[compress]
    if isinstance(level, bool) or not isinstance(level, int) or level not in allowed:
        raise ValueError(
            f'compress_level for {compress!r} must be an integer from '
            f'{allowed.start} to {allowed.stop - 1}, got {level!r}'
        )


def final_copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    cog: bool,
    resampling: str,
    compress: str = 'deflate',
    level: int | None = None,
) -> None:
    """Copy a finished GeoTIFF into its compressed final form.

    GDAL compresses with all CPU cores (``NUM_THREADS``), off the caller's
    thread. The result depends only on the pixels and metadata, so a resumed
    run ends byte-identical to an uninterrupted one. A COG's overviews are
    computed into a temporary file beside *dst* (or in ``CPL_TMPDIR``) that
    GDAL leaves uncompressed here (``COG_TMP_COMPRESSION=NONE``, unless the
    environment sets it; GDAL's default compresses it with ZSTD, or LZW, only
    to read it back at once): the same bytes, 1.6x faster for a 2048 px class
    map and 1.05-1.9x for uint8 scores (the gain depends on how well ZSTD
    compresses them), for a temporary file of up to a third of the
    uncompressed raster's size (benchmarks.md, "Tiled raster prediction").
    Compressed rasters use
    the TIFF predictor (horizontal differencing; floating-point for float
    data), which makes class maps and smooth scores smaller and faster to
    compress.

    Args:
        src: A finished (uncompressed) GeoTIFF.
        dst: The file to write.
        cog: A Cloud Optimized GeoTIFF with overviews (GDAL's COG driver), else
            a tiled GeoTIFF.
        resampling: Overview resampling (``'NEAREST'`` for class maps,
            ``'AVERAGE'`` for scores).
        compress: ``'deflate'`` (readable by every TIFF reader), ``'zstd'``
            (GDAL >= 2.3 reads it), ``'lzw'`` or ``'none'``.
        level: The compression's level (:data:`LEVELS`); None: the fastest,
            :data:`DEFAULT_LEVELS`.

    Raises:
        ValueError: If *compress* is unknown or *level* does not fit it.
    """
    check_compression(compress, level)
    options: dict[str, Any] = {
        'compress': COMPRESSIONS[compress],
        'num_threads': 'ALL_CPUS',
    }
    with rasterio.open(src) as source:
        floating = np.dtype(source.dtypes[0]).kind == 'f'
    if compress in DEFAULT_LEVELS:
        options['level'] = DEFAULT_LEVELS[compress] if level is None else level
    if compress != 'none':
        options['predictor'] = 3 if floating else 2
    if cog:
        options |= {'driver': 'COG', 'resampling': resampling, 'overviews': 'AUTO'}
        if compress != 'none':
            options['predictor'] = 'YES'
    else:
        options |= {'driver': 'GTiff', 'tiled': True, 'BIGTIFF': 'IF_SAFER'}
    with rasterio.Env(**_cog_tmp_compression()):
        rasterio.shutil.copy(str(src), str(dst), **options)


def _cog_tmp_compression() -> dict[str, str]:
    """``COG_TMP_COMPRESSION=NONE``, unless the environment or a rasterio Env sets it."""
    name = 'COG_TMP_COMPRESSION'
    if name in os.environ or (rasterio.env.hasenv() and name in rasterio.env.getenv()):
        return {}
    return {name: 'NONE'}


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
    final_copy(src, dst, True, resampling)


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


def grid_polygons(
    path: str | os.PathLike[str], labels: Sequence[str] | None = None
) -> gpd.GeoDataFrame:
    """One square polygon per chip of a classification raster, with its class and score.

    Args:
        path: A classification output: class probabilities (one band per
            class) or a one-band class map; one pixel per chip.
        labels: Class names, by class index, for a ``label`` column.

    Returns:
        Columns ``class``, ``score`` (the class's probability; absent for a
        class map), ``label`` (with *labels*) and ``geometry``, in the
        raster's CRS; chips that are nodata have no polygon.
    """
    with rasterio.open(path) as src:
        data = src.read().astype(np.float64)
        scales = np.array(src.scales, np.float64)[:, None, None]
        nodata, transform, crs = src.nodata, src.transform, src.crs
    valid = np.ones(data.shape[1:], bool)
    if nodata is not None:
        valid &= ~np.any((data == nodata) | np.isnan(data), axis=0)
    rows, cols = np.nonzero(valid)
    columns: dict[str, Any] = {}
    if data.shape[0] == 1:
        classes = data[0, rows, cols].astype(np.int64)
    else:
        scores = data[:, rows, cols] * scales[:, :, 0]
        classes = scores.argmax(axis=0)
        columns['score'] = scores.max(axis=0)
    columns = {'class': classes, **columns}
    if labels is not None:
        columns['label'] = np.array(
            [labels[v] if 0 <= v < len(labels) else str(v) for v in classes],
            dtype=object,
        )
    x0, y0 = transform * (cols, rows)
    x1, y1 = transform * (cols + 1, rows + 1)
    boxes = shapely.box(x0, y0, x1, y1)
    return gpd.GeoDataFrame(columns, geometry=list(boxes), crs=crs)


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
            f"{path}: writing GeoParquet needs pyarrow (pip install 'explora-geo[geoparquet]')"
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
