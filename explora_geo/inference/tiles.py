"""Tiled prediction over rasters of any size, streamed window by window.

:func:`predict_raster` runs a classifier or a segmentation model over a whole
raster or Sentinel-2 product (see :mod:`explora_geo.inference.sources`) in
overlapping tiles and writes a georeferenced COG (plus polygons). Threads
form a pipeline: readers cut tiles (each read on its own window, so memory
never depends on the raster's size), the caller's thread runs the model,
and a writer blends, encodes and writes finished rows (on CUDA the
blending and encoding are queued on the GPU by the model's thread and the
writer only writes). Finished
rows are committed next to the output, so an interrupted run continues where
it stopped and ends byte-identical to an uninterrupted one.

TorchGeo's ``RasterDataset`` + ``GridGeoSampler`` also read a raster in a grid,
but they index files by geographic bounds, do not pad the last row and
column, and leave stitching to the caller; here windows are exact pixel
windows of one grid and the stitching (blending, nodata, writing, resuming)
is the point.

.. versionadded:: 0.1
"""

import contextlib
import copy
import functools
import hashlib
import itertools
import json
import math
import os
import queue
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor, nn
from torchgeo.tasks import Classification
from tqdm import tqdm

from ..precision import PrecisionName, autocast, resolve_precision
from ..sensors import InputSpec, Normalization
from .sources import RasterSource, band_key, open_source
from .writers import (
    PartialOutput,
    atomic_path,
    check_compression,
    check_vector_path,
    final_copy,
    grid_polygons,
    polygonize,
    write_vectors,
)

__all__ = (
    'DEFAULT_OVERLAP_FRACTION',
    'RasterPrediction',
    'TileGrid',
    'blend_weights',
    'default_batch_size',
    'default_overlap',
    'default_readers',
    'predict_raster',
    'resolve_bands',
)

Activation = Literal['softmax', 'sigmoid', 'none']
Blend = Literal['cosine', 'linear', 'uniform']
Normalize = (
    Normalization | Callable[[Tensor], Tensor] | tuple[Sequence[float], Sequence[float]]
)

#: Default overlap of segmentation tiles as a fraction of the tile side, from
#: the agreement-with-whole-image measurement in docs/inference.md.
DEFAULT_OVERLAP_FRACTION = 0.25


def default_overlap(tile_size: int, patch_size: int | None = None) -> int:
    """The default overlap of segmentation tiles.

    Args:
        tile_size: Tile side.
        patch_size: The ViT's patch size; the overlap is rounded down to a
            multiple of it, so tiles share the patch grid.

    Returns:
        :data:`DEFAULT_OVERLAP_FRACTION` of the tile, in pixels.
    """
    overlap = int(tile_size * DEFAULT_OVERLAP_FRACTION)
    if patch_size and overlap >= patch_size:
        overlap -= overlap % patch_size
    return overlap


def default_batch_size(device: str | torch.device, tile_size: int = 256) -> int:
    """Tiles per forward pass when none is given.

    As many pixels per batch as 4 tiles of 256 px on the CPU and 16 on
    accelerators. On the CPU a small batch keeps the working set of each
    layer in the caches: with 256 px tiles of 13 bands, batches of 4 ran a
    small ViT + UPerNet 1.4x and a 1 x 1 convolution 15x faster per tile than
    batches of 16. Smaller tiles get proportionally more per batch (at most
    64 times as many), so that per-batch costs (the model's calls layer by
    layer, reading, hand-offs) are shared by as many pixels: on the CPU, the
    demo's classifier over a Sentinel-2 scene in 3721 tiles of 32 px took
    14.4 s with batches of 256 against 30.5 s with batches of 4, for the same
    bytes (benchmarks.md, "Tiled raster prediction").

    Args:
        device: Where the model runs.
        tile_size: Tile side in pixels.

    Returns:
        4 on the CPU, else 16, times ``(256 / tile_size)**2`` rounded down,
        from 1x (tiles of 256 px and more) to 64x (32 px and less).

    Raises:
        ValueError: If *tile_size* is not positive.
    """
    if tile_size < 1:
        raise ValueError(f'tile_size must be >= 1, got {tile_size}')
    base = 4 if torch.device(device).type == 'cpu' else 16
    return base * max(1, min(64, (256 * 256) // (tile_size * tile_size)))


def default_readers(device: str | torch.device) -> int:
    """The most reader threads when none is given.

    Readers start as the model needs them (one, then another whenever the
    model's device waits idle for a batch), so this is a ceiling. On the
    CPU the model and the reader share the cores: one reader (more were no
    faster on 2 cores). On an accelerator the host has cores to spare and,
    where reading sets the pace (cheap models, compressed rasters), up to
    4 readers cut a 4096 px raster's time by a fifth to a half on an H200
    host with 16 cores (benchmarks.md); one per 4 cores, at most 4.

    Args:
        device: Where the model runs.

    Returns:
        1 on the CPU, else ``min(4, cores // 4)`` (at least 1).
    """
    if torch.device(device).type == 'cpu':
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 4))


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


def _describe(names: Sequence[str | None]) -> list[str]:
    return [n or f'<unnamed {i + 1}>' for i, n in enumerate(names)]


def resolve_bands(
    source: RasterSource,
    model_bands: Sequence[str] | None = None,
    bands: Sequence[int | str] | None = None,
    input_bands: Sequence[str] | None = None,
) -> list[int]:
    """The input bands that feed the model, in the model's order.

    Args:
        source: The open input.
        model_bands: Band names the model was trained on, in order (from its
            checkpoint), matched to the input's band names ignoring case and
            zero padding (``'B01'`` is ``'B1'``).
        bands: An explicit choice instead: names or 1-based indexes.
        input_bands: Names of the input's bands in file order, replacing the
            file's own band descriptions.

    Returns:
        0-based band positions in *source*.

    Raises:
        ValueError: If a band is missing (naming both band lists), or
            *input_bands* does not name every band.
    """
    names: list[str | None] = list(source.names)
    if input_bands is not None:
        if len(input_bands) != source.count:
            raise ValueError(
                f'{source.name} has {source.count} bands, but {len(input_bands)} '
                f'band names were given: {list(input_bands)}'
            )
        names = list(input_bands)
    keys = [band_key(n) if n else None for n in names]
    if bands is not None:
        positions = []
        for band in bands:
            if isinstance(band, str):
                if band_key(band) not in keys:
                    raise ValueError(
                        f'band {band!r} not found in {source.name}; its bands are '
                        f'{_describe(names)}'
                    )
                positions.append(keys.index(band_key(band)))
            elif isinstance(band, int | np.integer) and not isinstance(band, bool):
                if not 1 <= band <= source.count:
                    raise ValueError(
                        f'band index {band} not found in {source.name}: it has '
                        f'{source.count} bands (indexes are 1-based)'
                    )
                positions.append(int(band) - 1)
            else:
                raise ValueError(
                    f'band {band!r} must be a name (str) or a 1-based index'
                )
        return positions
    if model_bands is None:
        return list(range(source.count))
    if all(k is None for k in keys):
        if source.count == len(model_bands):
            warnings.warn(
                f'{source.name}: its {source.count} bands have no names; assuming '
                f'they are the model bands {list(model_bands)} in this order (name '
                'them with band descriptions or --bands to have them checked)',
                UserWarning,
                stacklevel=3,
            )
            return list(range(source.count))
        raise ValueError(
            f'the model takes {len(model_bands)} bands {list(model_bands)}; '
            f'{source.name} has {source.count} unnamed bands. Name them (band '
            'descriptions, or --bands with one name per band in file order)'
        )
    missing = [b for b in model_bands if band_key(b) not in keys]
    if missing:
        raise ValueError(
            f'the model takes {len(model_bands)} bands {list(model_bands)}; '
            f'{source.name} has {source.count} bands {_describe(names)}; missing '
            f'{missing}'
        )
    return [keys.index(band_key(b)) for b in model_bands]


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
    #: Tiles of the whole grid.
    num_tiles: int
    #: Model outputs per pixel or tile (classes or labels).
    num_outputs: int
    #: Tiles predicted by this call (fewer than :attr:`num_tiles` after a resume).
    tiles_run: int = 0
    #: Output rows already finished by an earlier, interrupted run.
    resumed_rows: int = 0
    #: The model's arithmetic: ``'32-true'``, ``'bf16-mixed'`` or ``'16-mixed'``.
    precision: str = '32-true'


@dataclass
class _Batch:
    start: int  # index of the first tile (row-major)
    rows: np.ndarray  # tile row of each tile
    cols: np.ndarray
    x: Tensor  # (B, C, T, T) on the host; float32, normalised if `normalized`
    valid: np.ndarray | None  # (B, T, T) bool; None: all valid
    normalized: bool
    buffer: Tensor  # the pooled buffer *x* lives in, given back after use
    given: bool = False  # whether *buffer* is back in the pool
    mask: Tensor | None = None  # *valid* where the model runs, once there

    def valid_on(self, device: torch.device) -> Tensor | None:
        """*valid* as a tensor on *device*, copied there once."""
        if self.valid is None:
            return None
        if self.mask is None or self.mask.device != device:
            self.mask = torch.from_numpy(self.valid).to(device, non_blocking=True)
        return self.mask


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


def _span(index: np.ndarray | slice) -> tuple[int, np.ndarray | slice]:
    """First pixel of the window *index* needs, and *index* relative to it."""
    if isinstance(index, slice):
        return index.start, slice(0, index.stop - index.start)
    first = int(index.min())
    return first, index - first


def _read_tile(
    source: RasterSource,
    positions: Sequence[int],
    grid: 'TileGrid',
    row: int,
    col: int,
    masked: bool,
    out: np.ndarray,
) -> np.ndarray | None:
    """Read one tile into *out*; only its own window is read, edges reflected.

    Returns:
        The tile's valid pixels, or None if all are valid.
    """
    size = grid.tile_size
    rows = _reflect(row * grid.stride, size, grid.height)
    cols = _reflect(col * grid.stride, size, grid.width)
    top, rows = _span(rows)
    left, cols = _span(cols)
    height = rows.stop if isinstance(rows, slice) else int(rows.max()) + 1
    width = cols.stop if isinstance(cols, slice) else int(cols.max()) + 1
    window = Window(left, top, width, height)
    inside = isinstance(rows, slice) and isinstance(cols, slice)
    if inside and out.dtype == np.dtype(source.dtype):
        data = source.read(positions, window, out=out)
    else:
        data = source.read(positions, window)
    valid = source.valid(positions, window) if masked else None
    if data.dtype.kind == 'f':
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            data[:, ~finite] = 0
            valid = finite if valid is None else valid & finite
    if not inside:
        data = data[:, rows][:, :, cols]
        valid = None if valid is None else valid[rows][:, cols]
    if data is not out:
        out[...] = data
    return valid


#: Raster types torch converts from directly; others are read as float32.
_TORCH_DTYPES = {'uint8', 'int8', 'uint16', 'int16', 'int32', 'float32', 'float64'}


class _Worker(threading.Thread):
    """A daemon thread whose exception is re-raised by :meth:`check`."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as error:  # re-raised in the caller's thread
            self.error = error

    def check(self) -> None:
        if self.error is not None:
            raise self.error


_DONE = object()


class _Tiles:
    """Reads batches of tiles and turns them into model input in reused buffers.

    Large arrays allocated afresh for every batch cost page faults that are as
    slow as reading the raster, so batches live in a fixed set of buffers,
    handed back with :meth:`give` once the model has used them. On the CPU
    the raw tiles are read into one array (reused, read by one thread at a
    time), converted into a float32 buffer and normalised here, in the
    reader's thread. On CUDA they are read straight into a pinned buffer of
    the raster's own type (half the bytes of float32 for uint16 rasters, and
    no conversion on the host); the device converts and normalises them.
    Other accelerators get float32 buffers and normalise on the device.
    """

    def __init__(
        self,
        source: RasterSource,
        positions: Sequence[int],
        grid: TileGrid,
        batch_size: int,
        norm: Callable[[Tensor], Tensor],
        device: torch.device,
        buffers: int,
    ) -> None:
        self.source, self.positions, self.grid = source, positions, grid
        self.batch_size, self.norm = batch_size, norm
        self.masked = source.has_mask(positions) or np.dtype(source.dtype).kind == 'f'
        dtype = source.dtype if source.dtype in _TORCH_DTYPES else 'float32'
        shape = (batch_size, len(positions), grid.tile_size, grid.tile_size)
        # Raw tiles of a pixel-interleaved GeoTIFF keep its layout: (B, T, T, C)
        # arrays, read through (B, C, T, T) views; the conversion reorders.
        self.pixel = dtype == source.dtype and source.pixel_interleaved(positions)
        self.on_host = device.type == 'cpu'  # whether the reader normalises
        self.raw: np.ndarray | None = None
        buffer_dtype = torch.float32
        raw_on_device = _raw_on_device(device)
        if raw_on_device:
            buffer_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        elif self.pixel:
            self.raw = np.empty(_pixel_shape(shape), dtype).transpose(_BAND_ORDER)
        else:
            self.raw = np.empty(shape, dtype)
        buffer_shape = _pixel_shape(shape) if raw_on_device and self.pixel else shape
        pin = device.type == 'cuda'
        self.pool: queue.Queue[Tensor] = queue.Queue()
        for _ in range(buffers):
            self.pool.put(torch.empty(buffer_shape, dtype=buffer_dtype, pin_memory=pin))

    def sibling(self, source: RasterSource) -> '_Tiles':
        """A reader of the same tiles from another handle of the same input.

        It has its own raw array and shares the buffers.
        """
        other = copy.copy(self)
        other.source = source
        other.raw = None if self.raw is None else np.empty_like(self.raw)
        return other

    def read(self, start: int, stop: threading.Event) -> _Batch | None:
        """The batch of tiles from tile *start* on (None if *stop* is set)."""
        buffer = self._take(stop)
        if buffer is None:
            return None
        return self.fill(start, buffer)

    def fill(self, start: int, buffer: Tensor) -> _Batch:
        """The batch of tiles from tile *start* on, read into *buffer*.

        The buffer goes back to the pool if reading fails.
        """
        grid = self.grid
        index = np.arange(start, min(start + self.batch_size, len(grid)))
        rows, cols = index // grid.cols, index % grid.cols
        x = buffer[: len(index)]
        try:
            if self.raw is not None:
                data = self.raw[: len(index)]
                valid = self._read_into(data, rows, cols)
                if self.on_host:
                    mask = None if valid is None else torch.from_numpy(valid)
                    x = _convert(x, torch.from_numpy(data), mask, self.norm)
                else:
                    x.copy_(torch.from_numpy(data))
                return _Batch(start, rows, cols, x, valid, self.on_host, buffer)
            if self.pixel:
                x = x.permute(_BAND_ORDER)  # the raster's layout, uploaded as it lies
            valid = self._read_into(x.numpy(), rows, cols)
        except BaseException:
            self.pool.put(buffer)
            raise
        return _Batch(start, rows, cols, x, valid, False, buffer)

    def _read_into(
        self, data: np.ndarray, rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray | None:
        """Read the tiles at *rows*, *cols* into *data*; their valid pixels."""
        valid = None
        for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
            mask = _read_tile(
                self.source,
                self.positions,
                self.grid,
                int(r),
                int(c),
                self.masked,
                data[i],
            )
            if mask is not None:
                if valid is None:
                    valid = np.ones((len(rows), *mask.shape), bool)
                valid[i] = mask
        return valid

    def _take(self, stop: threading.Event) -> Tensor | None:
        while not stop.is_set():
            try:
                return self.pool.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def give(self, batch: _Batch) -> None:
        """Hand *batch*'s buffer back for reuse (once)."""
        if not batch.given:
            batch.given = True
            self.pool.put(batch.buffer)

    def done_with_input(self, batch: _Batch, out: Tensor) -> None:
        """Give the buffer back as soon as the model's output is independent of it.

        On the CPU, unless the output shares the input's memory (a view of
        it). On an accelerator the copy from the pinned buffer may still be
        running; the buffer goes back once the output reaches the host.
        """
        if out.device.type == 'cpu':
            shared = out.untyped_storage().data_ptr() == (
                batch.buffer.untyped_storage().data_ptr()
            )
            if not shared:
                self.give(batch)


#: (B, C, T, T) -> (B, T, T, C) shapes, and the view back.
_BAND_ORDER = (0, 3, 1, 2)


def _pixel_shape(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (shape[0], shape[2], shape[3], shape[1])


def _upload(x: Tensor, device: torch.device) -> Tensor:
    """Raw tiles on *device* as contiguous float32 ``(B, C, T, T)``.

    A pixel-interleaved batch (a ``(B, C, T, T)`` view of ``(B, T, T, C)``
    memory) is copied as it lies, in one non-blocking copy from its pinned
    buffer, and reordered on the device.
    """
    lies = x.permute(0, 2, 3, 1)
    if not x.is_contiguous() and lies.is_contiguous():
        moved = lies.to(device, non_blocking=True).permute(_BAND_ORDER)
        return torch.empty(x.shape, device=device).copy_(moved)
    return x.to(device, non_blocking=True).float()


def _prepare(
    x: Tensor, valid: Tensor | None, norm: Callable[[Tensor], Tensor]
) -> Tensor:
    """Normalise a batch; invalid pixels become 0 (after normalisation)."""
    x = norm(x)
    if valid is not None:
        x = x.masked_fill_(~valid[:, None], 0)
    return x


def _convert(
    x: Tensor, raw: Tensor, valid: Tensor | None, norm: Callable[[Tensor], Tensor]
) -> Tensor:
    """Raw tiles into the float32 buffer *x*, normalised (see :func:`_prepare`).

    A normalisation of each pixel on its own (:class:`_PixelNorm`) runs tile
    by tile, right after each tile's conversion, while the tile is still in
    the CPU's caches: about 30 % less time than converting the batch and
    then normalising it (4 tiles of 13 bands, 256 px), with the same
    arithmetic. Other callables get the batch.
    """
    if not isinstance(norm, _PixelNorm):
        return _prepare(x.copy_(raw), valid, norm)
    for i in range(len(x)):
        tile = x[i : i + 1].copy_(raw[i : i + 1])
        _prepare(tile, None if valid is None else valid[i : i + 1], norm)
    return x


def _buffer_count(readers: int, device: torch.device) -> int:
    """Input buffers for *readers* readers.

    On the CPU one each, two read ahead and the model's. On an accelerator
    at least 9: the model's thread runs ahead of the device, and each batch
    it has queued keeps its buffer until its outputs reach the host (see
    :meth:`_Tiles.done_with_input`); ViT-L + UPerNet with one reader on an
    H200 took 0.70 s with 6 buffers and 0.54 s with 9.
    """
    if device.type == 'cpu':
        return readers + 3
    return max(readers, 4) + 5


#: Seconds the model's device may wait, idle, for a batch before one more
#: reader starts.
_STARVED_S = 0.005


def _starved(device: torch.device) -> bool:
    """Whether *device* has finished all the work queued on it.

    The model's thread runs ahead of an accelerator, so waiting for a batch
    only slows the run once the device has nothing left to do. On the CPU
    the model runs in the waiting thread: always idle then.
    """
    if device.type == 'cuda':
        return bool(torch.cuda.current_stream(device).query())
    return True


class _Reading:
    """Reader threads from tile *first* on; batches come out in tile order.

    A reader takes a free buffer, then claims the next batch (so the earliest
    batch claimed always has a buffer), reads it with its own handle of the
    input and files it; :meth:`get` hands the batches on in tile order.
    Readers start on demand: one at first, then one more for every
    :data:`_STARVED_S` seconds that the model's thread waits for a batch
    while the model's device has nothing to do, up to one per handle. As
    many readers as the model needs and no more: on an H200, ViT-L + UPerNet
    on an uncompressed raster kept one reader and took a fifth less time
    than with four from the start; cheap models and compressed rasters,
    whose reading sets the pace, take more (benchmarks.md).
    """

    def __init__(
        self,
        readers: Sequence[_Tiles],
        first: int,
        device: torch.device | str = 'cpu',
    ) -> None:
        self.readers = list(readers)
        self.tiles = self.readers[0]
        self.device = torch.device(device)
        self.start(first)

    def start(self, first: int) -> None:
        """Read from tile *first* on."""
        self.first = first
        self.expected = first  # first tile of the next batch to hand on
        # Each start has its own claims, batches, lock and stop, so a reader
        # of an earlier start can never file a batch into this one.
        self.claims = itertools.count(first, self.tiles.batch_size)
        self.ready: dict[int, _Batch] = {}
        self.lock = threading.Condition()
        self.stop = threading.Event()
        self.workers: list[_Worker] = []
        self._add()

    def _add(self) -> None:
        read = functools.partial(
            _read_batches,
            self.readers[len(self.workers)],
            self.claims,
            self.ready,
            self.lock,
            self.stop,
        )
        worker = _Worker(f'tile-reader-{len(self.workers)}', read)
        self.workers.append(worker)
        worker.start()

    def get(self) -> Any:
        """The next batch in tile order, or ``_DONE`` after the last.

        While it waits with the model's device idle, one more reader starts
        every :data:`_STARVED_S` seconds (if there are handles left).
        """
        if self.expected >= len(self.tiles.grid):
            return _DONE
        with self.lock:
            idle_since: float | None = None
            while self.expected not in self.ready:
                more = len(self.workers) < len(self.readers)
                if more and _starved(self.device):
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= _STARVED_S:
                        self._add()
                        idle_since = now
                else:
                    idle_since = None
                self.lock.wait(timeout=0.001 if more else 0.1)
                for worker in self.workers:
                    worker.check()
                if self.expected not in self.ready and not any(
                    worker.is_alive() for worker in self.workers
                ):
                    raise RuntimeError('the tile readers stopped')
            batch = self.ready.pop(self.expected)
        self.expected += self.tiles.batch_size
        return batch

    def close(self) -> None:
        """Stop the threads; batches read and not taken give their buffers back."""
        self.stop.set()
        for worker in self.workers:
            if worker.is_alive():
                worker.join(timeout=30)
        with self.lock:
            for batch in self.ready.values():
                self.tiles.give(batch)
            self.ready.clear()


def _read_batches(
    tiles: _Tiles,
    claims: Iterator[int],
    ready: dict[int, _Batch],
    lock: threading.Condition,
    stop: threading.Event,
) -> None:
    """A reader's loop: take a buffer, claim the next batch, read it, file it."""
    while True:
        buffer = tiles._take(stop)
        if buffer is None:
            return
        with lock:
            start = next(claims)
        if start >= len(tiles.grid):
            tiles.pool.put(buffer)
            return
        batch = tiles.fill(start, buffer)
        with lock:
            ready[start] = batch
            lock.notify_all()


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


def _activate(y: Tensor, activation: str) -> Tensor:
    if activation == 'softmax':
        return y.softmax(dim=1)
    if activation == 'sigmoid':
        return y.sigmoid()
    return y


class _PixelNorm:
    """A normalisation that maps every pixel on its own, in place.

    Whatever part of a batch it is given, it computes the same values, so the
    host may apply it tile by tile (:func:`_convert`).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _normalizer(
    normalize: Normalize | None, channels: int, device: torch.device
) -> Callable[[Tensor], Tensor]:
    if normalize is None:
        return _PixelNorm(lambda x: x)
    if isinstance(normalize, Normalization):
        if len(normalize.bands) != channels:
            raise ValueError(
                f'normalization for bands {list(normalize.bands)} does not fit the '
                f'{channels} bands given to the model'
            )
        # In place: batches are the pipeline's own buffers.
        return _PixelNorm(normalize.apply_)
    if callable(normalize):
        # A user's callable is documented to get whole batches.
        return normalize
    mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in normalize)
    if mean.numel() != channels or std.numel() != channels:
        raise ValueError(
            f'normalize needs one mean and one std per band ({channels} bands), got '
            f'{mean.numel()} means and {std.numel()} stds'
        )
    mean = mean.view(1, -1, 1, 1).to(device)
    std = std.view(1, -1, 1, 1).to(device)
    return _PixelNorm(lambda x: x.sub_(mean).div_(std))


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


@dataclass(frozen=True)
class _Layout:
    """What the output raster holds."""

    kind: Literal['segmentation', 'classification']
    output: str  # 'classes' | 'scores'
    activation: str
    channels: int
    score_dtype: str  # 'uint8' | 'float32'

    @property
    def multilabel(self) -> bool:
        return self.activation == 'sigmoid' and self.channels > 1

    @property
    def count(self) -> int:
        if self.output == 'scores' or self.multilabel:
            return self.channels
        return 1

    @property
    def dtype(self) -> str:
        if self.output == 'scores':
            return self.score_dtype
        return 'uint8' if self.channels < 255 else 'uint16'

    @property
    def nodata(self) -> float:
        if self.dtype == 'float32':
            return float('nan')
        return 255 if self.dtype == 'uint8' else 65535

    def encode(self, sums: Tensor, norm: Tensor, valid: Tensor) -> Tensor:
        """Weighted score sums ``(C, rows, cols)`` -> output rows, on their device.

        Args:
            sums: Weighted sums of the scores (overwritten).
            norm: Sum of the weights per pixel.
            valid: Pixels with a value; the others are nodata.

        Returns:
            The output rows: uint8, float32, or int32 for uint16 class maps
            (torch computes little in uint16); :func:`_host_rows` casts them.
        """
        if self.output == 'classes' and not (self.multilabel or self.channels == 1):
            # The weighted mean's largest score is the weighted sum's.
            data = _argmax(sums, self.dtype)[None]
        else:
            scores = sums.div_(torch.where(norm > 0, norm, 1))
            if self.output == 'classes':
                data = (scores >= 0.5).to(torch.uint8)
            elif self.dtype == 'uint8':
                data = scores.clamp_(0, 1).mul_(254).round_().to(torch.uint8)
            else:
                data = scores
        data.masked_fill_(~valid, self.nodata)
        return data


def _argmax(scores: Tensor, dtype: str) -> Tensor:
    """Index of the largest score on axis 0 (the first on ties).

    One comparison per channel, and no branches: channel *c* is larger than
    every index so far, so ``max(index, c * (score > best))`` is *c* where
    the score is larger and the index so far elsewhere. On a CPU, for 4
    channels of random scores: 30x faster than :func:`torch.argmax` over a
    short first axis, and 4x faster than the same loop with
    :meth:`~torch.Tensor.masked_fill_`, whose branches mispredict wherever
    classes alternate. uint8 for *dtype* ``'uint8'``, else int32.
    """
    best = scores[0].clone()
    index_dtype = torch.uint8 if dtype == 'uint8' else torch.int32
    index = torch.zeros(scores.shape[1:], dtype=index_dtype, device=scores.device)
    larger = torch.empty(scores.shape[1:], dtype=torch.bool, device=scores.device)
    for c in range(1, scores.shape[0]):
        torch.gt(scores[c], best, out=larger)
        torch.maximum(index, larger.to(index_dtype).mul_(c), out=index)
        torch.maximum(best, scores[c], out=best)
    return index


def _host_rows(data: Tensor, dtype: str) -> np.ndarray:
    """Encoded rows (see :meth:`_Layout.encode`) as the output's numpy type."""
    array = data.cpu().numpy()
    return array if array.dtype == np.dtype(dtype) else array.astype(dtype)


class _Sink:
    """Accumulates per-tile scores; hands finished rows on for writing.

    Segmentation scores are weighted sums over a window of output rows
    ``[top, top + buffer)``; rows no remaining tile can reach are passed on
    (divided by their weight sums) and dropped. Classification scores fill
    one output row per tile row. The buffers live on *device*: on CUDA,
    blending and encoding run there and only finished, encoded rows travel
    to the host.
    """

    def __init__(
        self,
        grid: TileGrid,
        layout: _Layout,
        blend: Blend,
        top: int,
        device: torch.device | str = 'cpu',
        no_sync: bool = False,
    ) -> None:
        self.grid, self.layout = grid, layout
        self.device = torch.device(device)
        self.no_sync = no_sync  # never wait for the device (it blends there)
        self.weights = torch.from_numpy(
            blend_weights(grid.tile_size, grid.overlap, blend)
        ).to(self.device)
        width = grid.width if layout.kind == 'segmentation' else grid.cols
        rows = grid.tile_size + grid.stride if layout.kind == 'segmentation' else 2
        self.top = top  # first output row not yet handed on
        self.filled = 0  # rows from top that may hold data; the rest are 0
        self.sums = self._zeros((layout.channels, rows, width), torch.float32)
        self.norm = self._zeros((rows, width), torch.float32)
        self.invalid = self._zeros((rows, width), torch.bool)

    def _zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def _rows(self, count: int) -> None:
        """Make the buffer hold *count* rows from ``top``."""
        pad = (0, 0, 0, count - self.norm.shape[0])  # rows: dimension -2
        if pad[-1] > 0:
            self.sums = torch.nn.functional.pad(self.sums, pad)
            self.norm = torch.nn.functional.pad(self.norm, pad)
            self.invalid = torch.nn.functional.pad(self.invalid, pad)

    def add_batch(self, batch: '_Batch', out: Tensor, activation: str) -> None:
        """Add a batch of model outputs (logits), activated here."""
        scores = _activate(out.float(), activation)
        if scores.device != self.device:
            scores = scores.to(self.device)
        valid = batch.valid_on(self.device)
        if self.layout.kind == 'classification':
            self._add_classes(batch, scores, valid)
            return
        finite: Tensor | None = None
        # NaN and inf survive a sum: one reduction checks the batch, unless
        # that would wait for the device (then the mask is always made).
        if self.no_sync or not bool(torch.isfinite(scores.sum())):
            finite = torch.isfinite(scores).all(dim=1)
            scores = scores.nan_to_num(0.0, 0.0, 0.0)
        for i, (r, c) in enumerate(zip(batch.rows, batch.cols, strict=True)):
            self.add(
                int(r),
                int(c),
                scores[i],
                None if valid is None else valid[i],
                None if finite is None else finite[i],
            )

    def _add_classes(
        self, batch: '_Batch', scores: Tensor, valid: Tensor | None
    ) -> None:
        """Classification: one output pixel per tile.

        A tile counts if any of its pixels is valid and all its scores are
        finite (decided on the device).
        """
        keep = torch.isfinite(scores).all(dim=1)
        if valid is not None:
            keep &= valid.flatten(1).any(dim=1)
        new = batch.rows >= self.top  # on the host: no sync
        if not new.any():
            return
        last = int(batch.rows[new].max()) - self.top + 1
        self._rows(last)
        self.filled = max(self.filled, last)
        rows = torch.from_numpy(batch.rows[new] - self.top).to(self.device)
        cols = torch.from_numpy(batch.cols[new]).to(self.device)
        # Integer indices: a boolean one would wait for the device.
        take = torch.from_numpy(np.flatnonzero(new)).to(self.device)
        kept = keep[take]
        self.sums[:, rows, cols] = torch.where(kept[:, None], scores[take], 0).T
        self.norm[rows, cols] = kept.float()

    def add(
        self,
        row: int,
        col: int,
        scores: Tensor,
        valid: Tensor | None,
        finite: Tensor | None = None,
    ) -> None:
        """Add one segmentation tile's (activated) scores.

        Rows before ``top`` are ignored. *finite* marks the pixels whose
        scores are all finite (None: all); the others must be 0 in *scores*.
        """
        grid = self.grid
        y, x = row * grid.stride, col * grid.stride
        h = min(grid.tile_size, grid.height - y)
        w = min(grid.tile_size, grid.width - x)
        skip = max(0, self.top - y)  # rows already final
        if skip >= h:
            return
        self._rows(y + h - self.top)
        self.filled = max(self.filled, y + h - self.top)
        weights = self.weights[skip:h, :w]
        tile = scores[:, skip:h, :w]
        if finite is not None:
            # Non-finite scores get no weight: a pixel only they cover is nodata.
            weights = weights * finite[skip:h, :w]
        rows = slice(y + skip - self.top, y + h - self.top)
        # A fused multiply-add: one pass, no temporary.
        self.sums[:, rows, x : x + w].addcmul_(tile, weights)
        self.norm[rows, x : x + w] += weights
        if valid is not None:
            self.invalid[rows, x : x + w] |= ~valid[skip:h, :w]

    def take(self, tile_rows: int) -> '_Rows | None':
        """Output rows that the first *tile_rows* tile rows complete.

        The rows are views of the buffer, valid (and encoded in place) until
        :meth:`release`, which drops them.

        Returns:
            The rows, or None if no row is complete.
        """
        grid = self.grid
        if self.layout.kind == 'classification':
            until = tile_rows
        else:
            until = grid.height if tile_rows >= grid.rows else tile_rows * grid.stride
        count = until - self.top
        if count <= 0:
            return None
        self._rows(count)
        return _Rows(
            self.layout,
            self.top,
            until,
            self.sums[:, :count],
            self.norm[:count],
            self.invalid[:count],
        )

    def release(self, rows: '_Rows') -> None:
        """Drop *rows* (from :meth:`take`): later rows move to the top of the buffer."""
        count = rows.until - self.top
        # Only rows that hold data move or need clearing: the overlap of the
        # next tile row, not the whole buffer.
        moved = max(0, self.filled - count)
        if moved:
            # Source and target overlap when more rows move than were taken.
            for buffer in (self.sums, self.norm, self.invalid):
                rows_axis = buffer.ndim - 2
                part = buffer.narrow(rows_axis, count, moved)
                if moved > count:
                    part = part.clone()
                buffer.narrow(rows_axis, 0, moved).copy_(part)
        clear = slice(moved, max(self.filled, count))
        self.sums[:, clear] = 0
        self.norm[clear] = 0
        self.invalid[clear] = False
        self.filled = moved
        self.top = rows.until


@dataclass
class _Rows:
    """Finished output rows: weighted score sums and weights, not yet encoded."""

    layout: _Layout
    top: int
    until: int
    sums: Tensor
    norm: Tensor
    invalid: Tensor

    def encode(self) -> Tensor:
        covered = (self.norm > 0) & ~self.invalid
        return self.layout.encode(self.sums, self.norm, covered)


@dataclass
class _Written:
    """A batch blended on the device, and the rows it finished (if any).

    *data* is on the host, complete once *ready* (if any) has fired, which
    also says that the device has copied the batch's input: its buffer may
    be reused.
    """

    batch: _Batch | None
    top: int
    until: int
    data: Tensor | None
    ready: Any  # torch.cuda.Event | None


def _raw_on_device(device: torch.device) -> bool:
    """Whether tiles reach the model's device in the raster's own type.

    On CUDA (whose copies convert every type torch has). Other accelerators
    receive float32 tiles converted on the host; both normalise on the device.
    """
    return device.type == 'cuda'


def _blends_on_device(device: torch.device) -> bool:
    """Whether scores are blended and encoded on the model's device.

    On CUDA, whose events tell the writer when each batch's rows (and its
    input's copy) are done. Elsewhere the writer blends on the host.
    """
    return device.type == 'cuda'


def _finished(batch: _Batch, grid: TileGrid) -> int:
    """Tile rows complete once *batch* is blended (tiles come in row-major order)."""
    last_row, last_col = int(batch.rows[-1]), int(batch.cols[-1])
    return last_row + int(last_col == grid.cols - 1)


def _blend_on_device(
    sink: _Sink, batch: _Batch | None, out: Tensor | None, activation: str
) -> _Written:
    """Blend a batch and encode the rows it finishes, on the sink's device.

    Runs in the model's thread: on CUDA every step is queued on the current
    stream and the encoded rows are copied to pinned host memory without
    waiting, so the host never waits for the device here. Without a batch,
    the rows that remain are taken.
    """
    if batch is not None and out is not None:
        sink.add_batch(batch, out, activation)
        rows = sink.take(_finished(batch, sink.grid))
    else:
        rows = sink.take(sink.grid.rows)
    if rows is None:
        data, top, until = None, 0, 0
    else:
        encoded = rows.encode()
        if encoded.device.type == 'cuda':
            data = torch.empty(
                encoded.shape, dtype=encoded.dtype, pin_memory=True
            ).copy_(encoded, non_blocking=True)
        else:
            # A copy: float32 scores are a view of the buffer, reused at once.
            data = encoded.to('cpu', copy=True)
        top, until = rows.top, rows.until
        sink.release(rows)
    ready = None
    if sink.device.type == 'cuda':
        ready = torch.cuda.Event()
        ready.record()
    return _Written(batch, top, until, data, ready)


def _writer(
    partial: PartialOutput,
    sink: _Sink,
    tiles: _Tiles,
    activation: str,
    jobs: 'queue.Queue[Any]',
    stop: threading.Event,
    commit_interval: float,
) -> Callable[[], None]:
    """Writes finished rows; blends and encodes them first if the host does.

    Jobs come in tile order, then ``_DONE``: ``(batch, model output)`` pairs
    to blend here, or :class:`_Written` rows blended on the device.
    """
    grid, dtype = sink.grid, sink.layout.dtype
    last = time.monotonic()

    def write(top: int, until: int, data: np.ndarray) -> None:
        nonlocal last
        partial.write(data, Window(0, top, data.shape[-1], data.shape[1]))
        if time.monotonic() - last >= commit_interval:
            partial.commit(until)
            last = time.monotonic()

    def emit(rows: _Rows | None) -> None:
        if rows is None:
            return
        # Written before release: float32 scores are a view of the buffer.
        write(rows.top, rows.until, _host_rows(rows.encode(), dtype))
        sink.release(rows)

    def run() -> None:
        while True:
            job = jobs.get()
            if stop.is_set():
                return
            if job is _DONE:
                # Rows left, if the host blends (the device path took them).
                emit(sink.take(grid.rows))
                return
            if isinstance(job, _Written):
                if job.ready is not None:
                    job.ready.synchronize()  # releases the GIL while it waits
                if job.batch is not None:
                    tiles.give(job.batch)
                if job.data is not None:
                    write(job.top, job.until, _host_rows(job.data, dtype))
                continue
            batch, out = job
            sink.add_batch(batch, out, activation)
            tiles.give(batch)
            emit(sink.take(_finished(batch, grid)))

    return run


#: Content hashes by model object, with the identity of the tensors hashed.
_MODEL_HASHES: 'weakref.WeakKeyDictionary[nn.Module, tuple[Any, str]]' = (
    weakref.WeakKeyDictionary()
)


def _model_hash(model: nn.Module) -> str:
    """SHA-256 of the model's state: names, types, shapes and bytes.

    Cached per model object while every tensor of its state is the same tensor
    (data pointer) unmodified (version counter, which in-place updates such as
    ``load_state_dict`` and optimiser steps advance), so that predicting many
    rasters with one model reads its weights once: 0.8 s for a ViT-L on the
    CPU (SHA-256 runs at about 1.7 GB/s with the SHA CPU extensions).
    Writes through ``tensor.data`` bypass the version counter; a model
    changed that way between two predictions must be a new object (or
    loaded with ``load_state_dict``) for a partial output to be refused.
    """
    state = model.state_dict()
    identity = tuple(
        (name, v.data_ptr(), v._version, v.dtype, tuple(v.shape), str(v.device))
        if isinstance(v, Tensor)
        else (name, None)
        for name, v in state.items()
    )
    cached = _MODEL_HASHES.get(model)
    if cached is not None and cached[0] == identity:
        return cached[1]
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        digest.update(name.encode())
        if isinstance(value, Tensor):
            digest.update(f'{value.dtype}{tuple(value.shape)}'.encode())
            data = value.detach().cpu().contiguous().view(-1).view(torch.uint8)
            digest.update(data.numpy())  # hashed in place, not copied to bytes
    result = digest.hexdigest()
    _MODEL_HASHES[model] = (identity, result)
    return result


def _file_stamp(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM (``timeout``, SLURM, ``kill``) like Ctrl-C while predicting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f'signal {signum}')

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_input_spec(model: nn.Module) -> InputSpec | None:
    """The :class:`~explora_geo.sensors.InputSpec` a model carries, if any.

    :func:`explora_geo.inference.cli.load_task` sets ``input_spec`` on the
    tasks it loads from checkpoints.

    Args:
        model: A task or module.

    Returns:
        Its ``input_spec`` attribute, or None.
    """
    spec = getattr(model, 'input_spec', None)
    return spec if isinstance(spec, InputSpec) else None


def predict_raster(
    model: nn.Module,
    src_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    bands: Sequence[int | str] | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    normalize: Normalize | Literal[False] | None = None,
    device: str | torch.device = 'cpu',
    progress: bool = False,
    output: Literal['classes', 'scores'] | None = None,
    activation: Activation | None = None,
    blend: Blend = 'cosine',
    vector_path: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | None = None,
    cog: bool = True,
    *,
    compress: Literal['deflate', 'zstd', 'lzw', 'none'] = 'deflate',
    compress_level: int | None = None,
    spec: InputSpec | None = None,
    input_bands: Sequence[str] | None = None,
    score_dtype: Literal['uint8', 'float32'] | None = None,
    resume: bool = True,
    commit_interval: float = 10.0,
    gdal_cache_mb: int = 256,
    readers: int | None = None,
    precision: str = '32',
) -> RasterPrediction:
    """Predict over a whole raster in overlapping tiles and write a GeoTIFF.

    The model (a TorchGeo task or any module) receives float32 batches
    ``(B, bands, tile_size, tile_size)``. A model returning ``(B, C)`` is a
    classifier: the output has one pixel per tile (centred on the tile, pixel
    size ``tile_size - overlap`` input pixels). A model returning ``(B, C,
    tile_size, tile_size)`` segments: overlapping predictions are averaged
    with *blend* weights, and the output has the input's grid, CRS and
    transform. Tiles past the raster's edge are filled by reflection.

    Invalid input pixels (nodata or masked in any band, NaN, inf) are
    replaced by 0 after normalisation (the training mean for standard
    normalisation) with ``torch.where``, so they never turn valid
    neighbours into NaN, and they are nodata in the output; non-finite
    model outputs are nodata too, never a class.

    What the model expects comes from *spec* (default: ``model.input_spec``,
    set by :func:`~explora_geo.inference.cli.load_task` from the
    checkpoint): its bands are picked from the input by name, its
    normalisation applied, its input size used as the tile size.

    Args:
        model: The network; moved to *device* and run in eval mode (its mode
            is restored afterwards).
        src_path: A raster, several band files of one product, a Sentinel-2
            ``.SAFE`` folder or folder of band files, or a STAC item (see
            :func:`~explora_geo.inference.sources.open_source`).
        out_path: Output GeoTIFF, written atomically.
        bands: Explicit choice of the input's bands (names or 1-based
            indexes) in the model's order, instead of the spec's bands.
        tile_size: Tile side in pixels (default: the spec's input size, else 224).
        overlap: Pixels shared by neighbouring tiles (default: 0 for
            classifiers, :func:`default_overlap` for segmentation).
        batch_size: Tiles per forward pass; default
            :func:`default_batch_size` of *device* and *tile_size* (as many
            pixels as 4 tiles of 256 px on the CPU, 16 on accelerators).
        normalize: A :class:`~explora_geo.sensors.Normalization`, a callable
            applied to each batch or ``(mean, std)`` per band; default the
            spec's normalisation; ``False`` for raw values on purpose.
            Without any, a warning says the model sees raw values.
        device: Where the model runs.
        progress: Show a progress bar.
        output: ``'classes'`` (class index per pixel or tile; for several
            sigmoid labels one 0/1 band per label) or ``'scores'`` (one band
            per output, after *activation*); default ``'classes'`` for
            segmentation and ``'scores'`` (class probabilities) for
            classification.
        activation: Applied to the model's outputs before blending:
            ``'softmax'``, ``'sigmoid'`` or ``'none'``; default from a TorchGeo
            task's ``task`` hyperparameter (multiclass: softmax; binary,
            multilabel: sigmoid), else softmax for several outputs and sigmoid
            for one.
        blend: Weighting of overlapping segmentation tiles (see
            :func:`blend_weights`).
        vector_path: Also write polygons here (``.gpkg``, ``.parquet`` /
            ``.geoparquet`` (needs the ``geoparquet`` extra), ``.geojson``,
            ``.fgb``): regions of a class map with ``class`` and ``label``,
            or one square per classified chip with ``class``, ``score`` and
            ``label``.
        labels: Class names (default: the spec's classes or a TorchGeo
            task's ``labels``), used as band descriptions and in polygons.
        cog: Write a Cloud Optimized GeoTIFF (else a tiled GeoTIFF).
        compress: Compression of the output (see
            :func:`~explora_geo.inference.writers.final_copy`): ``'deflate'``
            (readable everywhere), ``'zstd'``, ``'lzw'`` or ``'none'``.
        compress_level: Level of ``'deflate'`` (1-12) or ``'zstd'`` (1-22);
            None: 1, the fastest (GDAL's own default, DEFLATE 6, writes
            uint8 scores about 3x slower in files about a fifth smaller).
        spec: What the model expects (default ``model.input_spec``).
        input_bands: Names of the input's bands in file order, replacing the
            file's band descriptions.
        score_dtype: ``'uint8'`` (probabilities scaled to 0-254, band scale
            1/254, nodata 255) or ``'float32'`` (nodata NaN); default uint8
            for probabilities, float32 after ``activation='none'``.
        resume: Continue an interrupted run of the same prediction (same
            inputs, model and options) from its last recorded row.
        commit_interval: Seconds between records of finished rows.
        gdal_cache_mb: GDAL's block cache, in MB, while predicting (bounds
            the reader's and writer's memory).
        readers: The most threads that read and decode tiles (and on the
            CPU normalise them), each with its own handle of the input. One
            starts at once, another whenever the model's device waits idle
            for a batch; default :func:`default_readers`. The output does
            not depend on it.
        precision: The model's arithmetic: ``'32'`` (fp32, the default:
            the same outputs on every machine), ``'bf16'`` (bf16 autocast)
            or ``'auto'`` (:func:`~explora_geo.precision.detect_precision`:
            bf16 where the device computes it natively, fp16 on CUDA GPUs
            without bf16, else fp32). On a CPU with AVX512-BF16, bf16 ran
            the demo classifier's forward passes 1.9x faster (its whole run
            over the bundled scene 4-7 % faster, reading then setting the
            pace); 2 of its 3721 tiles changed class. Blending and encoding
            stay in fp32.

    Returns:
        What was written.

    Raises:
        ValueError: If a band is missing, an argument is invalid, the model's
            output has an unexpected shape, or polygons are requested for
            scores of a segmentation.
        ImportError: If GeoParquet polygons are requested without pyarrow.
        KeyboardInterrupt: On Ctrl-C or SIGTERM; progress is kept for a rerun.
    """
    out_path = Path(out_path)
    device = torch.device(device)
    # fp32, bf16 autocast, or (auto on a CUDA GPU without bf16) fp16 autocast.
    resolved = resolve_precision(precision, device.type)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if readers is None:
        readers = default_readers(device)
    if isinstance(readers, bool) or not isinstance(readers, int) or readers < 1:
        raise ValueError(f'readers must be an integer >= 1, got {readers!r}')
    if output not in (None, 'classes', 'scores'):
        raise ValueError(f"output must be 'classes' or 'scores', got {output!r}")
    if score_dtype not in (None, 'uint8', 'float32'):
        raise ValueError(
            f"score_dtype must be 'uint8' or 'float32', got {score_dtype!r}"
        )
    check_compression(compress, compress_level)
    if vector_path is not None:
        check_vector_path(vector_path)
    spec = spec if spec is not None else model_input_spec(model)
    hparams = getattr(model, 'hparams', {}) or {}
    if labels is None:
        labels = (
            spec.classes if spec is not None and spec.classes else hparams.get('labels')
        )
    with contextlib.ExitStack() as stack:
        # rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64: bytes.
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=int(gdal_cache_mb) * 2**20))
        source = stack.enter_context(open_source(src_path))
        inputs = {p.resolve() for p in source.files}
        if out_path.resolve() in inputs:
            raise ValueError(f'{out_path}: the output would overwrite the input raster')
        positions = resolve_bands(
            source, spec.bands if spec is not None else None, bands, input_bands
        )
        if normalize is None and spec is not None and spec.normalization is not None:
            chosen = [source.names[p] for p in positions]
            normalize = _fit_normalization(spec.normalization, chosen)
        if normalize is None:
            warnings.warn(
                f'no normalisation for {type(model).__name__}: its checkpoint records '
                'none and none was given, so the model sees raw '
                f'{source.dtype} values instead of the normalised values it was '
                'trained on, and its predictions are likely wrong. Give the '
                'normalisation (normalize=, or --mean/--std), or normalize=False '
                'if the model takes raw values',
                UserWarning,
                stacklevel=2,
            )
        if tile_size is None:
            tile_size = spec.img_size if spec is not None and spec.img_size else 224
        is_classifier = isinstance(model, Classification)
        if overlap is None:
            overlap = (
                0
                if is_classifier
                else default_overlap(
                    tile_size, spec.patch_size if spec is not None else None
                )
            )
        grid = TileGrid(source.height, source.width, tile_size, overlap)
        if batch_size is None:
            batch_size = default_batch_size(device, tile_size)
        norm = _normalizer(
            None if normalize is False else normalize, len(positions), device
        )
        was_training = model.training
        model.to(device).eval()
        stack.callback(model.train, was_training)
        stack.enter_context(_sigterm_as_interrupt())
        signature = {
            'inputs': [_file_stamp(p) for p in source.files],
            'model': _model_hash(model),
            'bands': positions,
            'normalize': normalize.to_dict()
            if isinstance(normalize, Normalization)
            else repr(normalize)
            if callable(normalize)
            else [list(map(float, v)) for v in normalize]
            if normalize
            else None,
            'grid': [grid.height, grid.width, grid.tile_size, grid.overlap],
            'batch_size': batch_size,
            'precision': resolved,
            'options': [
                output,
                activation,
                blend,
                score_dtype,
                cog,
                list(labels or []),
            ],
        }
        # Every further reader has its own handles: GDAL datasets are not
        # shared between threads.
        more_sources = [
            stack.enter_context(open_source(src_path)) for _ in range(readers - 1)
        ]
        return _predict(
            model,
            source,
            more_sources,
            positions,
            grid,
            _Options(
                out_path,
                norm,
                device,
                batch_size,
                output,
                activation,
                blend,
                cog,
                compress,
                compress_level,
                labels,
                score_dtype,
                progress,
                vector_path,
                signature,
                resume,
                commit_interval,
                resolved,
            ),
        )


def _fit_normalization(
    normalization: Normalization, chosen: Sequence[str | None]
) -> Normalization:
    """The recorded normalisation for the bands chosen, in their order."""
    if None in chosen:
        return normalization
    keys = [band_key(b) for b in normalization.bands]
    wanted = [band_key(str(c)) for c in chosen]
    if wanted == keys or not set(wanted) <= set(keys):
        return normalization
    return normalization.select([normalization.bands[keys.index(k)] for k in wanted])


def _forward(
    model: nn.Module,
    batch: _Batch,
    norm: Callable[[Tensor], Tensor],
    device: torch.device,
    precision: PrecisionName = '32-true',
) -> Tensor:
    x = batch.x
    if not batch.normalized:
        # Raw values reach the device in the raster's type, converted there.
        x = _prepare(_upload(x, device), batch.valid_on(device), norm)
    with torch.inference_mode(), autocast(precision, device.type):
        y: Tensor = model(x)
    return y


@dataclass(frozen=True)
class _Options:
    """What :func:`predict_raster` resolved, for the pipeline."""

    out_path: Path
    norm: Callable[[Tensor], Tensor]
    device: torch.device
    batch_size: int
    output: str | None
    activation: Activation | None
    blend: Blend
    cog: bool
    compress: str
    compress_level: int | None
    labels: Sequence[str] | None
    score_dtype: str | None
    progress: bool
    vector_path: str | os.PathLike[str] | None
    signature: Mapping[str, Any]
    resume: bool
    commit_interval: float
    precision: PrecisionName


def _predict(
    model: nn.Module,
    source: RasterSource,
    more_sources: Sequence[RasterSource],
    positions: Sequence[int],
    grid: TileGrid,
    options: _Options,
) -> RasterPrediction:
    device, batch_size = options.device, options.batch_size
    buffers = _buffer_count(1 + len(more_sources), device)
    tiles = _Tiles(source, positions, grid, batch_size, options.norm, device, buffers)
    readers = [tiles, *(tiles.sibling(other) for other in more_sources)]
    # The first batch tells the model's kind and number of outputs.
    probe = tiles.read(0, threading.Event())
    assert probe is not None
    # A fresh run goes on with the next batch: read it while the model runs
    # the first one (a resumed run restarts the readers where it resumes).
    reading = _Reading(readers, batch_size, device)
    try:
        return _run(model, source, grid, tiles, probe, reading, options)
    finally:
        reading.close()


def _run(
    model: nn.Module,
    source: RasterSource,
    grid: TileGrid,
    tiles: _Tiles,
    probe: _Batch,
    reading: _Reading,
    options: _Options,
) -> RasterPrediction:
    out_path, norm, device = options.out_path, options.norm, options.device
    output, score_dtype, labels = options.output, options.score_dtype, options.labels
    vector_path, batch_size = options.vector_path, options.batch_size
    cog, compress, blend = options.cog, options.compress, options.blend
    y = _forward(model, probe, norm, device, options.precision)
    kind, channels = _kind(y, grid.tile_size)
    act = _activation(model, options.activation, channels)
    output = output or ('classes' if kind == 'segmentation' else 'scores')
    if score_dtype is None:
        score_dtype = 'float32' if act == 'none' else 'uint8'
    layout = _Layout(kind, output, act, channels, score_dtype)
    if vector_path is not None and kind == 'segmentation' and layout.count != 1:
        raise ValueError(
            'polygons need a one-band class map (output="classes", '
            f'not {output!r} with {layout.count} bands)'
        )
    names = list(labels) if labels is not None else []
    names += [str(i) for i in range(len(names), channels)]
    profile = _profile(source, grid, layout)
    partial = PartialOutput(
        out_path,
        {**options.signature, 'layout': [kind, output, act, channels, score_dtype]},
        profile,
        names[:channels] if layout.count > 1 or output == 'scores' else ['class'],
        {'labels': json.dumps(names[:channels])},
        scale=1 / 254 if output == 'scores' and score_dtype == 'uint8' else None,
    )
    if not options.resume:
        partial.discard()
    rows_done = partial.open()
    stop = threading.Event()
    jobs: queue.Queue[Any] = queue.Queue(maxsize=2)
    writer: _Worker | None = None
    try:
        if kind == 'segmentation':
            first_row = next(
                (
                    r
                    for r in range(grid.rows)
                    if r * grid.stride + grid.tile_size > rows_done
                ),
                grid.rows,
            )
        else:
            first_row = rows_done
        # Batches start where an uninterrupted run's batches start, so every
        # tile is predicted in the same batch as before: byte-identical results.
        start = (first_row * grid.cols // batch_size) * batch_size
        on_device = _blends_on_device(device)
        sink = _Sink(
            grid,
            layout,
            blend,
            rows_done,
            device if on_device else 'cpu',
            no_sync=on_device,
        )
        # A fresh run starts with the batch already read and predicted.
        pending: _Batch | None = probe if start == 0 else None
        if pending is None:
            tiles.give(probe)
        read_from = start + (batch_size if pending is not None else 0)
        if read_from != reading.first:
            reading.close()
            reading.start(read_from)
        writer = _Worker(
            'tile-writer',
            _writer(partial, sink, tiles, act, jobs, stop, options.commit_interval),
        )
        total = len(grid) - start
        tiles_run = 0
        writer.start()
        with tqdm(total=total, disable=not options.progress, unit='tile') as bar:
            while start < len(grid):
                item = pending if pending is not None else reading.get()
                pending = None
                if item is _DONE:
                    break
                batch: _Batch = item
                if batch.start == 0 and y.shape[0] == len(batch.rows):
                    out = y
                else:
                    out = _forward(model, batch, norm, device, options.precision)
                if tuple(out.shape[1:]) != tuple(y.shape[1:]):
                    raise ValueError(
                        f'model output of shape {tuple(out.shape)} for a batch, expected '
                        f'(B, {", ".join(map(str, y.shape[1:]))})'
                    )
                tiles.done_with_input(batch, out)
                job = (
                    _blend_on_device(sink, batch, out, act)
                    if on_device
                    else (batch, out)
                )
                _submit(jobs, job, writer, stop)
                tiles_run += len(batch.rows)
                bar.update(len(batch.rows))
        if on_device:
            _submit(jobs, _blend_on_device(sink, None, None, act), writer, stop)
        _submit(jobs, _DONE, writer, stop)
        writer.join()
        writer.check()
        partial.commit(grid.height if kind == 'segmentation' else grid.rows, False)
        resampling = 'NEAREST' if output == 'classes' else 'AVERAGE'
        with atomic_path(out_path) as tmp:
            final_copy(
                partial.work, tmp, cog, resampling, compress, options.compress_level
            )
        if vector_path is not None:
            if kind == 'segmentation':
                write_vectors(polygonize(out_path, labels), vector_path)
            else:
                write_vectors(grid_polygons(out_path, labels), vector_path)
        partial.discard()
    except KeyboardInterrupt:
        # Keep the partial output and its progress for a rerun.
        stop.set()
        raise
    except BaseException:
        stop.set()
        partial.discard()
        raise
    finally:
        stop.set()
        if writer is not None and writer.is_alive():
            with contextlib.suppress(queue.Full):
                jobs.put_nowait(_DONE)
        reading.close()
        if writer is not None and writer.is_alive():
            writer.join(timeout=30)
        partial.close()
        partial.release()
    return RasterPrediction(
        path=out_path,
        vector_path=Path(vector_path) if vector_path is not None else None,
        kind=kind,
        output=output,
        num_tiles=len(grid),
        num_outputs=channels,
        tiles_run=tiles_run,
        resumed_rows=rows_done,
        precision=options.precision,
    )


def _submit(
    q: 'queue.Queue[Any]', item: object, worker: _Worker, stop: threading.Event
) -> None:
    while True:
        worker.check()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if not worker.is_alive():
                worker.check()
                raise RuntimeError('the tile writer stopped') from None


def _profile(source: RasterSource, grid: TileGrid, layout: _Layout) -> dict[str, Any]:
    if layout.kind == 'segmentation':
        height, width, transform = source.height, source.width, source.transform
    else:
        # One pixel per tile, centred on the tile: its stride-sized core.
        half = grid.overlap / 2
        transform = (
            source.transform
            @ rasterio.Affine.translation(half, half)
            @ rasterio.Affine.scale(grid.stride)
        )
        height, width = grid.rows, grid.cols
    # GeoTIFF tiles are multiples of 16 pixels.
    block = max(16, min(256, 16 * (min(height, width) // 16)))
    return {
        'driver': 'GTiff',
        'height': height,
        'width': width,
        'count': layout.count,
        'dtype': layout.dtype,
        'nodata': layout.nodata,
        'crs': source.crs,
        'transform': transform,
        'tiled': True,
        'blockxsize': block,
        'blockysize': block,
        'BIGTIFF': 'IF_SAFER',
    }
