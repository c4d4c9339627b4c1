"""Tiled prediction over rasters of any size, streamed window by window.

:func:`predict_raster` runs a classifier or a segmentation model over a whole
multispectral GeoTIFF (e.g. a Sentinel-2 tile) in overlapping tiles and writes
a georeferenced GeoTIFF / COG, plus polygons for class maps. The input is read
one strip of tiles at a time and finished output rows are written and freed
as soon as no later tile can touch them, so memory depends on the raster's
width and the tile size, never on its height.

TorchGeo's ``RasterDataset`` + ``GridGeoSampler`` also read a raster in a grid,
but they index files by geographic bounds (and may resample to a common
resolution), do not pad the last row and column, and leave stitching to the
caller; here windows are exact pixel windows of one file and the stitching
(blending, nodata, writing) is the point.

.. versionadded:: 0.1
"""

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window
from torch import Tensor, nn
from tqdm import tqdm

from .writers import (
    atomic_path,
    check_vector_path,
    cog_copy,
    polygonize,
    write_vectors,
)

__all__ = (
    'RasterPrediction',
    'TileGrid',
    'blend_weights',
    'predict_raster',
    'resolve_bands',
)

Activation = Literal['softmax', 'sigmoid', 'none']
Normalize = Callable[[Tensor], Tensor] | tuple[Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class TileGrid:
    """Square tiles over a ``height x width`` raster, *overlap* pixels apart.

    Tiles start at multiples of ``stride = tile_size - overlap``; the last row
    and column start where they still add pixels, so they may extend past the
    raster (those parts are padded when read and discarded when written).

    .. versionadded:: 0.1
    """

    height: int
    width: int
    tile_size: int
    overlap: int = 0

    def __post_init__(self) -> None:
        """Validate the geometry.

        Raises:
            ValueError: If a size is not positive or the overlap is not in
                ``[0, tile_size)``.
        """
        if self.height < 1 or self.width < 1:
            raise ValueError(f'empty raster of {self.height} x {self.width} pixels')
        if self.tile_size < 1:
            raise ValueError(f'tile_size must be >= 1, got {self.tile_size}')
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f'overlap must be in [0, tile_size={self.tile_size}), got {self.overlap}'
            )

    @property
    def stride(self) -> int:
        """Distance between the starts of neighbouring tiles."""
        return self.tile_size - self.overlap

    def count(self, length: int) -> int:
        """Number of tiles along a side of *length* pixels."""
        return max(1, math.ceil((length - self.overlap) / self.stride))

    @property
    def rows(self) -> int:
        """Number of tile rows."""
        return self.count(self.height)

    @property
    def cols(self) -> int:
        """Number of tile columns."""
        return self.count(self.width)

    def __len__(self) -> int:
        """Number of tiles."""
        return self.rows * self.cols

    def window(self, row: int, col: int) -> Window:
        """The full (unclipped) window of a tile.

        Args:
            row: Tile row.
            col: Tile column.

        Returns:
            The window, possibly extending past the raster.
        """
        return Window(
            col * self.stride, row * self.stride, self.tile_size, self.tile_size
        )


def blend_weights(
    tile_size: int,
    overlap: int,
    kind: Literal['cosine', 'linear', 'uniform'] = 'cosine',
) -> np.ndarray:
    """Weights of a tile's pixels when overlapping predictions are averaged.

    The weight rises from near 0 to 1 across the *overlap* pixels at each
    side (a raised cosine or a linear ramp) and is 1 inside, so a pixel's
    prediction comes mostly from the tile in which it lies farthest from an
    edge. Weights are strictly positive, so the weighted average is defined
    at every pixel, including the raster's own edges.

    Args:
        tile_size: Tile side.
        overlap: Pixels shared by neighbouring tiles.
        kind: ``'cosine'``, ``'linear'`` or ``'uniform'`` (plain average).

    Returns:
        ``(tile_size, tile_size)`` float32 weights.

    Raises:
        ValueError: If *kind* is unknown.
    """
    if kind not in ('cosine', 'linear', 'uniform'):
        raise ValueError(f"blend must be 'cosine', 'linear' or 'uniform', got {kind!r}")
    i = np.arange(tile_size, dtype=np.float64)
    if kind == 'uniform' or overlap == 0:
        ramp = np.ones(tile_size)
    else:
        # Distance to the nearer edge, in pixel centres, as a fraction of the overlap.
        t = np.clip(np.minimum(i + 0.5, tile_size - i - 0.5) / overlap, 0, 1)
        ramp = 0.5 - 0.5 * np.cos(np.pi * t) if kind == 'cosine' else t
    return np.outer(ramp, ramp).astype(np.float32)


def resolve_bands(
    src: DatasetReader, bands: Sequence[int | str] | None, path: str | os.PathLike[str]
) -> list[int]:
    """Turn band names or 1-based indexes into rasterio band indexes.

    Args:
        src: The open raster.
        bands: Band descriptions (e.g. ``'B04'``, as stored in the file) or
            1-based indexes; ``None`` for all bands.
        path: The file, for error messages.

    Returns:
        1-based band indexes.

    Raises:
        ValueError: If a band is not in the file.
    """
    if bands is None:
        return list(src.indexes)
    names = list(src.descriptions)
    indexes = []
    for band in bands:
        if isinstance(band, str):
            if band in names:
                indexes.append(names.index(band) + 1)
                continue
            folded = [n.casefold() if n else n for n in names]
            if band.casefold() not in folded:
                raise ValueError(
                    f'band {band!r} not found in {path}; its bands are '
                    f'{[n or f"<unnamed {i + 1}>" for i, n in enumerate(names)]}'
                )
            indexes.append(folded.index(band.casefold()) + 1)
        elif isinstance(band, int | np.integer) and not isinstance(band, bool):
            if not 1 <= band <= src.count:
                raise ValueError(
                    f'band index {band} not found in {path}: it has {src.count} '
                    'bands (indexes are 1-based)'
                )
            indexes.append(int(band))
        else:
            raise ValueError(f'band {band!r} must be a name (str) or a 1-based index')
    return indexes


@dataclass(frozen=True)
class RasterPrediction:
    """What :func:`predict_raster` wrote.

    .. versionadded:: 0.1
    """

    #: The prediction raster.
    path: Path
    #: The polygons, if requested.
    vector_path: Path | None
    #: ``'segmentation'`` (per pixel) or ``'classification'`` (per tile).
    kind: Literal['segmentation', 'classification']
    #: ``'classes'`` or ``'scores'``.
    output: str
    #: Tiles predicted.
    num_tiles: int
    #: Model outputs per pixel or tile (classes or labels).
    num_outputs: int


@dataclass
class _Tile:
    row: int
    col: int
    data: np.ndarray  # (C, T, T), the raster's data type
    valid: np.ndarray | None  # (T, T) bool; None: all valid


def _has_mask(src: DatasetReader, indexes: Sequence[int]) -> bool:
    return any(src.mask_flag_enums[i - 1] != [MaskFlags.all_valid] for i in indexes)


def _valid(src: DatasetReader, indexes: Sequence[int], window: Window) -> np.ndarray:
    """Pixels valid in every selected band."""
    masks = src.read_masks(list(indexes), window=window)
    valid: np.ndarray = np.all(masks > 0, axis=0)
    return valid


#: Raster types torch converts from directly; others are read as float32.
_TORCH_DTYPES = {'uint8', 'int8', 'uint16', 'int16', 'int32', 'float32', 'float64'}


def _reflect(start: int, size: int, length: int) -> np.ndarray | slice:
    """Indices ``start .. start + size - 1`` mirrored into ``[0, length)``.

    The same as ``numpy.pad(..., mode='reflect')`` of the whole raster (edge
    pixel not repeated); a plain slice when nothing lies outside.
    """
    if start + size <= length:
        return slice(start, start + size)
    if length == 1:
        return np.zeros(size, np.intp)
    period = 2 * (length - 1)
    index = np.arange(start, start + size) % period
    return np.where(index < length, index, period - index)


def _tiles(
    src: DatasetReader, indexes: Sequence[int], grid: TileGrid, masked: bool
) -> Iterator[_Tile]:
    """Tiles in row-major order, reading one strip of rows per tile row.

    Strips keep the raster's data type (converted to float on the model's
    device). Tiles that cross the raster's edge are filled by reflecting the
    raster at its edge (which keeps image statistics there; the padded
    pixels' predictions are discarded), so the last strip also holds the
    rows that the bottom tiles mirror.
    """
    size = grid.tile_size
    dtypes = {src.dtypes[i - 1] for i in indexes}
    out_dtype = None if dtypes <= _TORCH_DTYPES and len(dtypes) == 1 else 'float32'
    for row in range(grid.rows):
        top = row * grid.stride
        first = top if top + size <= grid.height else max(0, grid.height - size)
        window = Window(0, first, grid.width, min(grid.height, top + size) - first)
        strip = src.read(list(indexes), window=window, out_dtype=out_dtype)
        valid = _valid(src, indexes, window) if masked else None
        rows = _reflect(top, size, grid.height)  # in raster rows
        if isinstance(rows, slice):
            rows = slice(rows.start - first, rows.stop - first)
        else:
            rows = rows - first
        for col in range(grid.cols):
            cols = _reflect(col * grid.stride, size, grid.width)
            data = strip[:, rows][:, :, cols]
            mask = None if valid is None else valid[rows][:, cols]
            yield _Tile(row, col, data, mask)


def _activation(model: nn.Module, activation: Activation | None, channels: int) -> str:
    if activation is not None:
        if activation not in ('softmax', 'sigmoid', 'none'):
            raise ValueError(
                f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}"
            )
        return activation
    hparams = getattr(model, 'hparams', {}) or {}
    task = hparams.get('task')
    if task == 'multiclass':
        return 'softmax'
    if task in ('binary', 'multilabel'):
        return 'sigmoid'
    return 'softmax' if channels > 1 else 'sigmoid'


def _normalizer(
    normalize: Normalize | None, channels: int, device: torch.device
) -> Callable[[Tensor], Tensor]:
    if normalize is None:
        return lambda x: x
    if callable(normalize):
        return normalize
    mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in normalize)
    if mean.numel() != channels or std.numel() != channels:
        raise ValueError(
            f'normalize needs one mean and one std per band ({channels} bands), got '
            f'{mean.numel()} means and {std.numel()} stds'
        )
    mean = mean.view(1, -1, 1, 1).to(device)
    std = std.view(1, -1, 1, 1).to(device)
    # In place: the batch is a fresh tensor (stacked tiles).
    return lambda x: x.sub_(mean).div_(std)


def predict_raster(
    model: nn.Module,
    src_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    bands: Sequence[int | str] | None = None,
    tile_size: int = 224,
    overlap: int | None = None,
    batch_size: int = 16,
    normalize: Normalize | None = None,
    device: str | torch.device = 'cpu',
    progress: bool = False,
    output: Literal['classes', 'scores'] | None = None,
    activation: Activation | None = None,
    blend: Literal['cosine', 'linear', 'uniform'] = 'cosine',
    vector_path: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | None = None,
    cog: bool = True,
) -> RasterPrediction:
    """Predict over a whole raster in overlapping tiles and write a GeoTIFF.

    The model (a TorchGeo task or any module) receives float32 batches
    ``(B, bands, tile_size, tile_size)``. A model returning ``(B, C)`` is a
    classifier: the output has one pixel per tile (centred on the tile, pixel
    size ``tile_size - overlap`` input pixels). A model returning ``(B, C,
    tile_size, tile_size)`` segments: overlapping predictions are averaged
    with *blend* weights, and the output has the input's grid, CRS and
    transform. Tiles past the raster's edge are filled by reflection; input
    pixels that are nodata (masked) in any selected band are set to 0 after
    normalisation and are nodata in the output.

    Args:
        model: The network; moved to *device* and run in eval mode (its mode
            is restored afterwards).
        src_path: Input raster (any format rasterio reads; a VRT can stack
            single-band files).
        out_path: Output GeoTIFF, written atomically.
        bands: Band names (the file's band descriptions) or 1-based indexes,
            in the order the model expects; ``None`` for all bands.
        tile_size: Tile side in pixels.
        overlap: Pixels shared by neighbouring tiles (default an eighth of
            the tile).
        batch_size: Tiles per forward pass.
        normalize: A callable applied to each batch (e.g. ``kornia``'s
            ``Normalize``) or ``(mean, std)`` per band.
        device: Where the model runs.
        progress: Show a progress bar.
        output: ``'classes'`` (class index per pixel or tile; for several
            sigmoid labels one 0/1 band per label) or ``'scores'`` (one float32
            band per output, after *activation*); default ``'classes'`` for
            segmentation and ``'scores'`` (class probabilities) for
            classification.
        activation: Applied to the model's outputs before blending:
            ``'softmax'``, ``'sigmoid'`` or ``'none'``; default from a TorchGeo
            task's ``task`` hyperparameter (multiclass: softmax; binary,
            multilabel: sigmoid), else softmax for several outputs and sigmoid
            for one.
        blend: Weighting of overlapping segmentation tiles (see
            :func:`blend_weights`).
        vector_path: Also write the class map's polygons here (``.gpkg``,
            ``.parquet``/``.geoparquet`` (needs pyarrow), ``.geojson``,
            ``.fgb``), with ``class`` and ``label`` columns.
        labels: Class names (default: a TorchGeo task's ``labels``), used as
            band descriptions of score rasters and in the polygons.
        cog: Write a Cloud Optimized GeoTIFF (else a tiled GeoTIFF).

    Returns:
        What was written.

    Raises:
        ValueError: If a band is missing, an argument is invalid, the model's
            output has an unexpected shape, or polygons are requested for
            anything but a one-band class map.
        ImportError: If GeoParquet polygons are requested without pyarrow.
    """
    src_path, out_path = Path(src_path), Path(out_path)
    if out_path.resolve() == src_path.resolve():
        raise ValueError(f'{out_path}: the output would overwrite the input raster')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if output not in (None, 'classes', 'scores'):
        raise ValueError(f"output must be 'classes' or 'scores', got {output!r}")
    if vector_path is not None:
        check_vector_path(vector_path)
    device = torch.device(device)
    hparams = getattr(model, 'hparams', {}) or {}
    labels = labels if labels is not None else hparams.get('labels')
    was_training = model.training
    model.to(device).eval()
    try:
        with rasterio.open(src_path) as src:
            indexes = resolve_bands(src, bands, src_path)
            if overlap is None:
                overlap = tile_size // 8
            grid = TileGrid(src.height, src.width, tile_size, overlap)
            norm = _normalizer(normalize, len(indexes), device)
            tiles = _tiles(src, indexes, grid, _has_mask(src, indexes))
            bar = tqdm(total=len(grid), disable=not progress, unit='tile')
            with bar, atomic_path(out_path) as tmp:
                kind, output_kind, num_outputs = _run(
                    model,
                    src,
                    indexes,
                    grid,
                    tiles,
                    norm=norm,
                    device=device,
                    batch_size=batch_size,
                    output=output,
                    activation=activation,
                    blend=blend,
                    dst_path=tmp,
                    cog=cog,
                    labels=labels,
                    bar=bar,
                )
                if vector_path is not None:
                    with rasterio.open(tmp) as written:
                        if output_kind != 'classes' or written.count != 1:
                            raise ValueError(
                                'polygons need a one-band class map (output="classes", '
                                f'not {output_kind!r} with {written.count} bands)'
                            )
                    write_vectors(polygonize(tmp, labels), vector_path)
    finally:
        model.train(was_training)
    return RasterPrediction(
        path=out_path,
        vector_path=Path(vector_path) if vector_path is not None else None,
        kind=kind,
        output=output_kind,
        num_tiles=len(grid),
        num_outputs=num_outputs,
    )


def _run(
    model: nn.Module,
    src: DatasetReader,
    indexes: Sequence[int],
    grid: TileGrid,
    tiles: Iterator[_Tile],
    *,
    norm: Callable[[Tensor], Tensor],
    device: torch.device,
    batch_size: int,
    output: str | None,
    activation: Activation | None,
    blend: Literal['cosine', 'linear', 'uniform'],
    dst_path: Path,
    cog: bool,
    labels: Sequence[str] | None,
    bar: tqdm,
) -> tuple[Literal['segmentation', 'classification'], str, int]:
    """Run every batch and write the output raster to *dst_path*."""
    masked = _has_mask(src, indexes)
    work = dst_path.with_name(dst_path.name + '.gtiff.tif') if cog else dst_path
    sink: _Sink | None = None
    try:
        while batch := list(islice(tiles, batch_size)):
            data = np.stack([t.data for t in batch])
            x = torch.from_numpy(data)
            # Wide unsigned types have little support on accelerators: convert
            # them here; others (uint8 imagery) travel compactly.
            x = (
                x.float().to(device)
                if data.dtype in (np.uint16, np.uint32)
                else x.to(device)
            )
            x = norm(x.float())
            if masked:
                valid = torch.from_numpy(np.stack([t.valid for t in batch]))  # type: ignore[misc]
                x = x * valid[:, None].to(x.device, x.dtype)
            with torch.inference_mode():
                y = model(x)
            if sink is None:
                kind, channels = _kind(y, grid.tile_size)
                act = _activation(model, activation, channels)
                sink = _Sink(
                    src,
                    indexes,
                    grid,
                    kind,
                    output or ('classes' if kind == 'segmentation' else 'scores'),
                    act,
                    channels,
                    labels,
                    masked,
                    blend,
                    work,
                    # The COG copy compresses; its source need not.
                    compress=None if cog else 'deflate',
                )
            if tuple(y.shape[1:]) != sink.shape:
                raise ValueError(
                    f'model output of shape {tuple(y.shape)} for a batch, expected '
                    f'(B, {", ".join(map(str, sink.shape))})'
                )
            scores = _activate(y.float(), sink.activation).cpu().numpy()
            for tile, score in zip(batch, scores, strict=True):
                sink.add(tile, score)
            last = batch[-1]
            # Tiles come in row-major order: rows before the last tile's are done.
            sink.flush(last.row + int(last.col == grid.cols - 1))
            bar.update(len(batch))
        assert sink is not None
        sink.close()
        if cog:
            resampling = 'NEAREST' if sink.output == 'classes' else 'AVERAGE'
            cog_copy(work, dst_path, resampling)
    finally:
        if sink is not None:
            sink.close()
        if cog:
            work.unlink(missing_ok=True)
    return sink.kind, sink.output, sink.channels


def _kind(
    y: Tensor, tile_size: int
) -> tuple[Literal['segmentation', 'classification'], int]:
    if isinstance(y, Tensor) and y.ndim == 2:
        return 'classification', int(y.shape[1])
    if isinstance(y, Tensor) and y.ndim == 4 and y.shape[-2:] == (tile_size, tile_size):
        return 'segmentation', int(y.shape[1])
    shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
    raise ValueError(
        f'model output {shape} is neither (B, C) logits nor (B, C, {tile_size}, '
        f'{tile_size}) logits'
    )


def _activate(y: Tensor, activation: str) -> Tensor:
    if activation == 'softmax':
        return y.softmax(dim=1)
    if activation == 'sigmoid':
        return y.sigmoid()
    return y


class _Sink:
    """Turns per-tile scores into output rows and writes them to a GeoTIFF.

    Segmentation scores are accumulated as weighted sums over a window of
    rows ``[top, top + buffer)``; rows no remaining tile can reach are divided
    by their weight sums, encoded, written and dropped. Classification scores
    fill one output row per tile row.
    """

    def __init__(
        self,
        src: DatasetReader,
        indexes: Sequence[int],
        grid: TileGrid,
        kind: Literal['segmentation', 'classification'],
        output: str,
        activation: str,
        channels: int,
        labels: Sequence[str] | None,
        masked: bool,
        blend: Literal['cosine', 'linear', 'uniform'],
        path: Path,
        compress: str | None = 'deflate',
    ) -> None:
        if output not in ('classes', 'scores'):
            raise ValueError(f"output must be 'classes' or 'scores', got {output!r}")
        self.src, self.indexes, self.grid = src, indexes, grid
        self.kind, self.output, self.activation = kind, output, activation
        self.channels, self.masked = channels, masked
        self.shape: tuple[int, ...] = (channels,)
        if kind == 'segmentation':
            self.shape += (grid.tile_size, grid.tile_size)
        self.weights = blend_weights(grid.tile_size, grid.overlap, blend)
        self.multilabel = activation == 'sigmoid' and channels > 1
        width = grid.width if kind == 'segmentation' else grid.cols
        self.top = 0  # first output row not yet written
        self.used = 0  # buffer rows that hold sums
        self.sums = np.zeros((channels, 0, width), np.float32)
        self.norm = np.zeros((0, width), np.float32)
        profile = self._profile(compress)
        self.nodata = profile['nodata']
        self.dst: DatasetWriter = rasterio.open(path, 'w', **profile)
        names = list(labels) if labels is not None else []
        names += [str(i) for i in range(len(names), channels)]
        if output == 'scores' or self.multilabel:
            for i in range(channels):
                self.dst.set_band_description(i + 1, names[i])
        else:
            self.dst.set_band_description(1, 'class')
        self.dst.update_tags(labels=json.dumps(names[:channels]))

    def _profile(self, compress: str | None) -> dict[str, Any]:
        src, grid = self.src, self.grid
        if self.kind == 'segmentation':
            height, width, transform = src.height, src.width, src.transform
        else:
            # One pixel per tile, centred on the tile: its stride-sized core.
            half = grid.overlap / 2
            transform = (
                src.transform
                @ rasterio.Affine.translation(half, half)
                @ rasterio.Affine.scale(grid.stride)
            )
            height, width = grid.rows, grid.cols
        if self.output == 'scores':
            count, dtype, nodata = self.channels, 'float32', float('nan')
        else:
            count = self.channels if self.multilabel else 1
            dtype = 'uint8' if self.channels < 255 else 'uint16'
            nodata = 255 if dtype == 'uint8' else 65535
        # GeoTIFF tiles are multiples of 16 pixels.
        block = max(16, min(256, 16 * (min(height, width) // 16)))
        return {
            'driver': 'GTiff',
            'height': height,
            'width': width,
            'count': count,
            'dtype': dtype,
            'nodata': nodata,
            'crs': src.crs,
            'transform': transform,
            'tiled': True,
            'blockxsize': block,
            'blockysize': block,
            'compress': compress,
            'BIGTIFF': 'IF_SAFER',
        }

    def _grow(self, rows: int) -> None:
        """Make the buffer hold at least *rows* rows from ``top``."""
        self.used = max(self.used, rows)
        capacity = self.norm.shape[0]
        if rows <= capacity:
            return
        capacity = max(rows, 2 * capacity)
        sums = np.zeros((self.channels, capacity, self.norm.shape[1]), np.float32)
        norm = np.zeros((capacity, self.norm.shape[1]), np.float32)
        sums[:, : self.sums.shape[1]] = self.sums
        norm[: self.norm.shape[0]] = self.norm
        self.sums, self.norm = sums, norm

    def add(self, tile: _Tile, scores: np.ndarray) -> None:
        """Add one tile's (activated) scores."""
        grid = self.grid
        if self.kind == 'classification':
            self._grow(tile.row + 1 - self.top)
            if tile.valid is None or tile.valid.any():
                self.sums[:, tile.row - self.top, tile.col] = scores
                self.norm[tile.row - self.top, tile.col] = 1
            return
        y, x = tile.row * grid.stride, tile.col * grid.stride
        h = min(grid.tile_size, grid.height - y)
        w = min(grid.tile_size, grid.width - x)
        self._grow(y + h - self.top)
        weights = self.weights[:h, :w]
        rows = slice(y - self.top, y + h - self.top)
        self.sums[:, rows, x : x + w] += scores[:, :h, :w] * weights
        self.norm[rows, x : x + w] += weights

    def flush(self, tile_rows: int) -> None:
        """Write the output rows that the first *tile_rows* tile rows complete."""
        grid = self.grid
        if self.kind == 'classification':
            until = tile_rows
        else:
            until = grid.height if tile_rows >= grid.rows else tile_rows * grid.stride
        count = until - self.top
        if count <= 0:
            return
        norm = self.norm[:count]
        covered = norm > 0
        scores = self.sums[:, :count] / np.where(covered, norm, 1)
        window = Window(0, self.top, self.norm.shape[1], count)
        if self.kind == 'segmentation' and self.masked:
            covered &= _valid(self.src, self.indexes, window)
        self.dst.write(self._encode(scores, covered), window=window)
        # Shift the rows still being accumulated to the top of the buffer.
        rest = self.used - count
        self.sums[:, :rest] = self.sums[:, count : self.used]
        self.norm[:rest] = self.norm[count : self.used]
        self.sums[:, rest : self.used] = 0
        self.norm[rest : self.used] = 0
        self.used = rest
        self.top = until

    def _encode(self, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.output == 'scores':
            data = scores
        elif self.multilabel or self.channels == 1:
            data = (scores >= 0.5).astype(self.dst.dtypes[0])
        else:
            data = scores.argmax(axis=0)[None].astype(self.dst.dtypes[0])
        data[:, ~valid] = self.nodata
        return data

    def close(self) -> None:
        """Close the output file."""
        if not self.dst.closed:
            self.dst.close()
