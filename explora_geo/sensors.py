"""Sensors and normalisations: band names, value scales and statistics, defined once.

A :class:`Sensor` says what a file holds: its band names in order, the raw value
that means "full scale" and per-band statistics in raw units. A
:class:`Normalization` says how raw values become model input. It is plain data
(:meth:`Normalization.to_dict` / :meth:`Normalization.from_dict`), so it travels
with every checkpoint and export and prediction applies exactly what training
applied.

Every dataset, datamodule, model, recipe, the demo and prediction read the
statistics from here; no other module holds a copy.

.. versionadded:: 0.1
"""

import json
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

#: How raw values become model input:
#:
#: * ``'satmae'``: SatMAE's ``clip((x - (mean - 2 std)) / (4 std), 0, 1)``
#: * ``'standard'``: ``(x - mean) / std``
#: * ``'unit'``: ``x / scale``, values in [0, 1] (what the self-supervised
#:   objectives take: they crop, jitter and normalise themselves)
NormalizationKind = Literal['satmae', 'standard', 'unit']


@dataclass(frozen=True)
class Normalization:
    """How raw band values become model input.

    Attributes:
        kind: One of :data:`NormalizationKind`.
        bands: Band names, in the order the model takes them.
        mean: Per-band mean in raw units (unused by ``'unit'``).
        std: Per-band standard deviation in raw units (unused by ``'unit'``).
        scale: Raw value mapped to 1 by ``'unit'`` (e.g. 255 for 8-bit images).

    .. versionadded:: 0.1
    """

    kind: NormalizationKind
    bands: tuple[str, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scale: float = 1.0

    def __post_init__(self) -> None:
        """Check the fields.

        Raises:
            ValueError: If *kind* is unknown, or *mean* / *std* do not hold one
                positive-std value per band where *kind* needs them.
        """
        if self.kind not in get_args(NormalizationKind):
            raise ValueError(
                f'unknown normalization kind {self.kind!r}; expected one of '
                f'{get_args(NormalizationKind)}'
            )
        if self.kind == 'unit':
            if self.scale <= 0:
                raise ValueError(
                    f"'unit' normalization needs scale > 0, got {self.scale}"
                )
            return
        n = len(self.bands)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f'{self.kind!r} normalization needs one mean and one std per band '
                f'{self.bands}; got {len(self.mean)} means and {len(self.std)} stds'
            )
        bad = [b for b, s in zip(self.bands, self.std, strict=True) if not s > 0]
        if bad:
            raise ValueError(f'standard deviation must be > 0 for bands {bad}')

    @property
    def output_range(self) -> tuple[float, float] | None:
        """The range of the normalised values, if bounded (``'satmae'``, ``'unit'``)."""
        return None if self.kind == 'standard' else (0.0, 1.0)

    def __call__(self, x: Tensor) -> Tensor:
        """Normalise *x*, bands on dimension -3 (``(C, H, W)`` or ``(B, C, H, W)``).

        Args:
            x: Raw values.

        Returns:
            A new float tensor.

        Raises:
            ValueError: If *x* does not have one channel per band.
        """
        if x.ndim < 3 or x.shape[-3] != len(self.bands):
            raise ValueError(
                f'normalization for bands {self.bands} expects {len(self.bands)} '
                f'channels on dimension -3, got shape {tuple(x.shape)}'
            )
        x = x.float()
        if self.kind == 'unit':
            return x / self.scale
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        if self.kind == 'standard':
            return (x - mean) / std
        return ((x - (mean - 2 * std)) / (4 * std)).clamp(0, 1)

    def apply_(self, x: Tensor) -> Tensor:
        """Normalise a float tensor in place (same arithmetic as :meth:`__call__`).

        For pipelines that reuse their buffers (tiled prediction): no new
        tensor is allocated.

        Args:
            x: Raw values as a floating-point tensor, bands on dimension -3.

        Returns:
            *x*, normalised.

        Raises:
            ValueError: If *x* is not floating point or does not have one
                channel per band.
        """
        if x.ndim < 3 or x.shape[-3] != len(self.bands):
            raise ValueError(
                f'normalization for bands {self.bands} expects {len(self.bands)} '
                f'channels on dimension -3, got shape {tuple(x.shape)}'
            )
        if not x.is_floating_point():
            raise ValueError(f'apply_ needs a floating-point tensor, got {x.dtype}')
        if self.kind == 'unit':
            return x.div_(self.scale)
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        if self.kind == 'standard':
            return x.sub_(mean).div_(std)
        return x.sub_(mean - 2 * std).div_(4 * std).clamp_(0, 1)

    def affine(self) -> tuple[Tensor, Tensor]:
        """Per-band shift and divisor: the normalization is ``(x - shift) / divisor``.

        For building an on-device ``kornia.augmentation.Normalize``.

        Returns:
            Float32 tensors of shape ``(C,)``.

        Raises:
            ValueError: For ``'satmae'``, which clips and is not affine.
        """
        if self.kind == 'unit':
            n = len(self.bands)
            return torch.zeros(n), torch.full((n,), float(self.scale))
        if self.kind == 'standard':
            return torch.tensor(self.mean), torch.tensor(self.std)
        raise ValueError(
            "'satmae' normalization clips to [0, 1] and is not affine; apply it "
            'with Normalization.__call__'
        )

    def describe(self) -> str:
        """A short human description: kind, bands and value range."""
        span = self.output_range
        where = 'unbounded' if span is None else f'values in [{span[0]:g}, {span[1]:g}]'
        how = {
            'unit': f'x / {self.scale:g}',
            'standard': '(x - mean) / std',
            'satmae': 'clip((x - (mean - 2 std)) / (4 std), 0, 1)',
        }[self.kind]
        return f'{self.kind!r} ({how}, {where}) of bands {list(self.bands)}'

    def select(self, bands: Sequence[str]) -> 'Normalization':
        """The same normalization for a subset or reordering of the bands.

        Args:
            bands: Band names, each one of :attr:`bands`.

        Returns:
            A new :class:`Normalization`.
        """
        idx = band_indices(self.bands, bands)
        pick = (lambda v: tuple(v[i] for i in idx)) if self.mean else (lambda v: v)
        return Normalization(
            self.kind, tuple(bands), pick(self.mean), pick(self.std), self.scale
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for checkpoints and file headers."""
        return {
            'kind': self.kind,
            'bands': list(self.bands),
            'mean': list(self.mean),
            'std': list(self.std),
            'scale': self.scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'Normalization':
        """Inverse of :meth:`to_dict`.

        Args:
            data: A mapping as written by :meth:`to_dict`.

        Returns:
            The normalization.

        Raises:
            ValueError: If a key is missing.
        """
        missing = {'kind', 'bands'} - set(data)
        if missing:
            raise ValueError(
                f'normalization record lacks {sorted(missing)}; has {sorted(data)}'
            )
        return cls(
            kind=data['kind'],
            bands=tuple(data['bands']),
            mean=tuple(float(v) for v in data.get('mean', ())),
            std=tuple(float(v) for v in data.get('std', ())),
            scale=float(data.get('scale', 1.0)),
        )


def band_indices(available: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Positions of *wanted* bands in *available*.

    Args:
        available: Band names in order.
        wanted: Band names to look up.

    Returns:
        One index per wanted band.

    Raises:
        ValueError: Naming the missing bands and the available ones.
    """
    missing = [b for b in wanted if b not in available]
    if missing:
        raise ValueError(
            f'bands {missing} are not among the available bands {tuple(available)}'
        )
    return [list(available).index(b) for b in wanted]


@dataclass(frozen=True)
class Sensor:
    """What an image file holds: bands, value scale, statistics.

    Attributes:
        name: Registry name.
        bands: Band names in file order.
        mean: Per-band mean in raw units.
        std: Per-band standard deviation in raw units.
        scale: The raw value of full scale (255 for 8-bit images).
        rgb_bands: Bands shown as red, green, blue.

    .. versionadded:: 0.1
    """

    name: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    rgb_bands: tuple[str, ...]

    def __post_init__(self) -> None:
        """Check one statistic per band (through :class:`Normalization`)."""
        Normalization('standard', self.bands, self.mean, self.std)

    def normalization(
        self, kind: NormalizationKind, bands: Sequence[str] | None = None
    ) -> Normalization:
        """The normalization of *kind* for *bands* of this sensor.

        Args:
            kind: One of :data:`NormalizationKind`.
            bands: Band names (default: all, in file order).

        Returns:
            The normalization, with this sensor's statistics.
        """
        full = Normalization(kind, self.bands, self.mean, self.std, self.scale)
        return full if bands is None else full.select(bands)

    def band_stats(self) -> tuple[dict[str, float], dict[str, float]]:
        """Per-band mean and std in raw units, keyed by band name."""
        return dict(zip(self.bands, self.mean, strict=True)), dict(
            zip(self.bands, self.std, strict=True)
        )

    def unit_stats(
        self, bands: Sequence[str] | None = None
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and std of *bands* for values already divided by :attr:`scale`."""
        norm = self.normalization('standard', bands)
        return _scaled(norm.mean, 1 / self.scale), _scaled(norm.std, 1 / self.scale)

    def stats(self, bands: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """Per-band mean and std (raw units) of *bands* as float32 tensors."""
        norm = self.normalization('standard', bands)
        return torch.tensor(norm.mean), torch.tensor(norm.std)


def _scaled(values: Sequence[float], factor: float) -> tuple[float, ...]:
    return tuple(factor * v for v in values)


# Sentinel-2 L1C bands in file order and the fMoW-Sentinel training-set
# statistics of SatMAE, in digital numbers.
_S2_BANDS = (
    'B1', 'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8', 'B8A', 'B9', 'B10', 'B11', 'B12',
)  # fmt: skip
_S2_MEAN = (
    1370.19151926, 1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144,
    1645.40315151, 1846.87040806, 1762.59530783, 1972.62420416, 582.72633433,
    14.77112979, 1732.16362238, 1247.91870117,
)  # fmt: skip
_S2_STD = (
    633.15169573, 650.2842772, 712.12507725, 965.23119807, 948.9819932,
    1108.06650639, 1258.36394548, 1233.1492281, 1364.38688993, 472.37967789,
    14.3114637, 1310.36996126, 1087.6020813,
)  # fmt: skip

#: Sentinel-2 L1C digital numbers, 13 bands; statistics of the fMoW-Sentinel
#: training set (SatMAE).
SENTINEL2 = Sensor(
    name='sentinel2',
    bands=_S2_BANDS,
    mean=_S2_MEAN,
    std=_S2_STD,
    scale=10000.0,
    rgb_bands=('B4', 'B3', 'B2'),
)

#: fMoW-RGB 8-bit images; statistics of the fMoW-RGB training set (SatMAE).
FMOW_RGB = Sensor(
    name='fmow_rgb',
    bands=('R', 'G', 'B'),
    mean=_scaled((0.4182007312774658, 0.4214799106121063, 0.3991275727748871), 255),
    std=_scaled((0.28774282336235046, 0.27541765570640564, 0.2764017581939697), 255),
    scale=255.0,
    rgb_bands=('R', 'G', 'B'),
)

#: 8-bit RGB photographs with ImageNet statistics (WILDS, NAIP RGB, SpaceNet).
IMAGENET_RGB = Sensor(
    name='imagenet_rgb',
    bands=('R', 'G', 'B'),
    mean=_scaled((0.485, 0.456, 0.406), 255),
    std=_scaled((0.229, 0.224, 0.225), 255),
    scale=255.0,
    rgb_bands=('R', 'G', 'B'),
)

#: Every sensor by name.
SENSORS: dict[str, Sensor] = {s.name: s for s in (SENTINEL2, FMOW_RGB, IMAGENET_RGB)}


def get_sensor(name: str) -> Sensor:
    """The sensor registered as *name*.

    Args:
        name: A key of :data:`SENSORS`.

    Returns:
        The sensor.

    Raises:
        KeyError: Naming the known sensors.
    """
    try:
        return SENSORS[name]
    except KeyError:
        raise KeyError(f'unknown sensor {name!r}; known: {sorted(SENSORS)}') from None


#: Key under which checkpoints and exports store their :class:`InputSpec`.
INPUT_SPEC_KEY = 'explora_geo_inputs'


@dataclass(frozen=True)
class InputSpec:
    """What a trained model expects as input and what its outputs mean.

    Written into every checkpoint and export (under :data:`INPUT_SPEC_KEY`, as
    :meth:`to_dict`) so that prediction needs to be told nothing.

    Attributes:
        normalization: Bands in order and how raw values are normalised; None if
            unknown.
        img_size: Input size the model was trained at, in pixels.
        patch_size: Patch size of the ViT.
        classes: Class names in label order, for classifiers and segmenters.

    .. versionadded:: 0.1
    """

    normalization: Normalization | None = None
    img_size: int | None = None
    patch_size: int | None = None
    classes: tuple[str, ...] | None = None

    @property
    def bands(self) -> tuple[str, ...] | None:
        """Band names in the order the model takes them, if known."""
        return None if self.normalization is None else self.normalization.bands

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-compatible)."""
        return {
            'normalization': None
            if self.normalization is None
            else self.normalization.to_dict(),
            'img_size': self.img_size,
            'patch_size': self.patch_size,
            'classes': None if self.classes is None else list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'InputSpec':
        """Inverse of :meth:`to_dict`.

        Args:
            data: A mapping as written by :meth:`to_dict`.

        Returns:
            The input spec.
        """
        norm = data.get('normalization')
        classes = data.get('classes')
        return cls(
            normalization=None if norm is None else Normalization.from_dict(norm),
            img_size=data.get('img_size'),
            patch_size=data.get('patch_size'),
            classes=None if classes is None else tuple(classes),
        )


def write_input_spec(checkpoint: MutableMapping[str, Any], spec: InputSpec) -> None:
    """Record *spec* in a checkpoint or export header, under :data:`INPUT_SPEC_KEY`.

    Args:
        checkpoint: A Lightning checkpoint dict, or any mapping written to a file.
            String-only headers (safetensors metadata) take
            ``json.dumps(spec.to_dict())`` under the same key instead.
        spec: What the model expects.
    """
    checkpoint[INPUT_SPEC_KEY] = spec.to_dict()


def read_input_spec(checkpoint: Mapping[str, Any]) -> InputSpec | None:
    """The :class:`InputSpec` recorded in a checkpoint or export header, if any.

    Args:
        checkpoint: A mapping as written by :func:`write_input_spec` (the value
            may also be its JSON text, as in safetensors metadata).

    Returns:
        The spec, or None when none is recorded.

    Raises:
        ValueError: If the record is malformed.
    """
    data = checkpoint.get(INPUT_SPEC_KEY)
    if data is None:
        return None
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, Mapping):
        raise ValueError(
            f'{INPUT_SPEC_KEY} must hold a mapping as written by InputSpec.to_dict, '
            f'got {type(data).__name__}'
        )
    return InputSpec.from_dict(data)
