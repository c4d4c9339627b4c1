"""Metadata shared by the fMoW family: categories, timestamps, metadata CSVs."""

import os
from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd

#: The 62 fMoW categories in the canonical order used for integer labels.
FMOW_CLASSES: tuple[str, ...] = (
    'airport',
    'airport_hangar',
    'airport_terminal',
    'amusement_park',
    'aquaculture',
    'archaeological_site',
    'barn',
    'border_checkpoint',
    'burial_site',
    'car_dealership',
    'construction_site',
    'crop_field',
    'dam',
    'debris_or_rubble',
    'educational_institution',
    'electric_substation',
    'factory_or_powerplant',
    'fire_station',
    'flooded_road',
    'fountain',
    'gas_station',
    'golf_course',
    'ground_transportation_station',
    'helipad',
    'hospital',
    'impoverished_settlement',
    'interchange',
    'lake_or_pond',
    'lighthouse',
    'military_facility',
    'multi-unit_residential',
    'nuclear_powerplant',
    'office_building',
    'oil_or_gas_facility',
    'park',
    'parking_lot_or_garage',
    'place_of_worship',
    'police_station',
    'port',
    'prison',
    'race_track',
    'railway_bridge',
    'recreational_facility',
    'road_bridge',
    'runway',
    'shipyard',
    'shopping_mall',
    'single-unit_residential',
    'smokestack',
    'solar_farm',
    'space_facility',
    'stadium',
    'storage_tank',
    'surface_mine',
    'swimming_pool',
    'toll_booth',
    'tower',
    'tunnel_opening',
    'waste_disposal',
    'water_treatment_facility',
    'wind_farm',
    'zoo',
)

_CLASS_INDEX = {name: i for i, name in enumerate(FMOW_CLASSES)}


class FMoWSampleError(ValueError):
    """A file or metadata entry of an fMoW dataset cannot be turned into a sample.

    The message names the file (or CSV row) and what is wrong with it.

    .. versionadded:: 0.1
    """


def class_index(value: object, where: str, allow_index: bool = False) -> int:
    """Map an fMoW category name (or integer label) to its index in :data:`FMOW_CLASSES`.

    Args:
        value: a category name such as ``'airport'``, or with *allow_index* also an
            integer label in [0, 61] (as text or int).
        where: the file or CSV row the value comes from, for the error message.
        allow_index: accept integer labels as well as names.

    Returns:
        the integer label.

    Raises:
        FMoWSampleError: if *value* is not a known category (or valid label).

    .. versionadded:: 0.1
    """
    if isinstance(value, str) and value in _CLASS_INDEX:
        return _CLASS_INDEX[value]
    text = str(value).strip()
    if allow_index and text.isdigit() and int(text) < len(FMOW_CLASSES):
        return int(text)
    expected = f'one of the {len(FMOW_CLASSES)} fMoW category names'
    if allow_index:
        expected += f' or an integer label in [0, {len(FMOW_CLASSES) - 1}]'
    raise FMoWSampleError(f'{where}: unknown fMoW class {value!r}; expected {expected}')


def parse_timestamp(value: object, where: str) -> tuple[int, int, int]:
    """Parse an fMoW ISO 8601 timestamp such as ``'2017-06-21T00:00:00Z'``.

    Args:
        value: the timestamp string.
        where: the file or CSV row the value comes from, for the error message.

    Returns:
        ``(year, month, hour)``, month in 1..12 and hour in 0..23, in UTC (a
        timestamp without a zone is taken as UTC).

    Raises:
        FMoWSampleError: if *value* is not an ISO 8601 timestamp.

    .. versionadded:: 0.1
    """
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise FMoWSampleError(
            f'{where}: cannot parse timestamp {value!r}; expected ISO 8601 such as '
            "'2017-06-21T00:00:00Z'"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.year, moment.month, moment.hour


def read_metadata_csv(path: str, required: Sequence[str]) -> pd.DataFrame:
    """Read an fMoW metadata CSV and check that it has the required columns.

    Every column is read as text so that identifiers such as ``location_id`` keep
    their spelling.

    Args:
        path: the CSV file.
        required: column names that must be present.

    Returns:
        the table with a fresh 0-based index (CSV line = index + 2).

    Raises:
        FMoWSampleError: if the file cannot be parsed or a column is missing.

    .. versionadded:: 0.1
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FMoWSampleError(f'{path}: cannot parse CSV ({e})') from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise FMoWSampleError(
            f'{path}: missing required column(s) {missing}; found {list(table.columns)}'
        )
    return table.reset_index(drop=True)


def csv_row(path: str, index: int) -> str:
    """Describe a row of a metadata CSV for error messages.

    Args:
        path: the CSV file.
        index: 0-based row index of the table returned by :func:`read_metadata_csv`.

    Returns:
        ``'<path> line <n>'`` with the 1-based line number in the file.

    .. versionadded:: 0.1
    """
    return f'{os.fspath(path)} line {index + 2}'
