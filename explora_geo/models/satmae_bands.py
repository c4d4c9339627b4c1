"""Sentinel-2 bands as SatMAE's group-channel models take them.

.. versionadded:: 0.1
"""

from ..sensors import SENTINEL2

__all__ = ('SATMAE_BANDS', 'SATMAE_GROUPS', 'SENTINEL2_BANDS')

#: Sentinel-2 L1C bands in the order of the fMoW-Sentinel GeoTIFFs.
SENTINEL2_BANDS: tuple[str, ...] = SENTINEL2.bands
#: The 10 bands SatMAE keeps (B1, B9 and B10 dropped), in input order.
SATMAE_BANDS: tuple[str, ...] = (
    'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8', 'B8A', 'B11', 'B12',
)  # fmt: skip
#: SatMAE's band groups: visible + NIR, red edge + narrow NIR, SWIR.
SATMAE_GROUPS: tuple[tuple[str, ...], ...] = (
    ('B2', 'B3', 'B4', 'B8'),
    ('B5', 'B6', 'B7', 'B8A'),
    ('B11', 'B12'),
)
