"""Base class for image datasets indexed by a table of files.

Every dataset of this kind lists its samples in a CSV file: one row per image,
with the target (class label or boxes) in other columns. What goes wrong with
such datasets is always one of a few things -- a column missing from the table,
a file listed in it that is not on disk, an image that cannot be decoded, a
label outside the class list -- and the reaction to each is shared here: a
clear error that names the table, the line, the file and the problem, or, when
the user opts in with ``on_error='skip'``, skipping the sample and counting it
in a warning. A label is never silently replaced.
"""

import abc
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import Tensor
from torchgeo.datasets import NonGeoDataset
from torchgeo.datasets.utils import Path, Sample

from .plot import plot_rgb_sample

#: How a dataset reacts to a bad sample: raise an error, or skip and warn.
OnError = Literal['raise', 'skip']


class InvalidSampleError(ValueError):
    """A sample listed in a table cannot be used (corrupt image, bad target).

    .. versionadded:: 0.1
    """


def table_records(
    table_path: Path, table: pd.DataFrame, paths: Sequence[str], **targets: Any
) -> pd.DataFrame:
    """The sample records of the rows of a table, as :meth:`ImageTableDataset._set_records` takes them.

    Args:
        table_path: The file the rows were read from (by :func:`read_table`).
        table: The rows, one per sample, keeping their index from :func:`read_table`
            (0 for the first row below the header).
        paths: The image file of each row.
        **targets: Target columns (``label``, ``boxes``, ...), one value per row.

    Returns:
        Records with columns ``path``, ``table``, ``line`` (the row's line in the
        file, the header being line 1) and the targets.
    """
    return pd.DataFrame(
        {
            'path': paths,
            'table': table_path,
            'line': table.index.to_numpy() + 2,
            **targets,
        }
    )


def read_table(
    path: Path, required: Sequence[str], dtype: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a CSV table and check that it has the required columns.

    Args:
        path: CSV file to read.
        required: Column names that must be present.
        dtype: Optional column dtypes passed to :func:`pandas.read_csv`.

    Returns:
        The table, with its columns as read.

    Raises:
        ValueError: If the file cannot be parsed, or a required column is missing
            (the message names the file, the missing columns and those found).

    .. versionadded:: 0.1
    """
    try:
        table = pd.read_csv(path, dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"Cannot parse table '{path}': {e}") from e
    except ValueError as e:  # a dtype that the column's values do not fit
        raise ValueError(f"Cannot read table '{path}': {e}") from e
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ValueError(
            f"Table '{path}' is missing required column(s) {missing}; "
            f'found columns {list(table.columns)}'
        )
    return table


def integer_labels(values: pd.Series, num_classes: int) -> tuple[np.ndarray, pd.Series]:
    """Parse a column of class indices and describe the values that are not valid.

    Args:
        values: Column of class indices, as read from a table.
        num_classes: Number of classes; valid indices are ``0 .. num_classes - 1``.

    Returns:
        The labels as int64 (``-1`` where invalid) and, per row, an empty string
        or the description of the problem with the value.

    .. versionadded:: 0.1
    """
    numeric = pd.to_numeric(values, errors='coerce')
    whole = numeric.notna() & (numeric == np.floor(numeric))
    valid = whole & (numeric >= 0) & (numeric < num_classes)
    problems = pd.Series('', index=values.index, dtype=object)
    bad = ~valid
    problems[bad] = [
        f'invalid label: {value!r} is not a class index in [0, {num_classes - 1}]'
        for value in values[bad]
    ]
    labels = np.where(valid, numeric.fillna(-1), -1).astype(np.int64)
    return labels, problems


class ImageTableDataset(NonGeoDataset, abc.ABC):
    """Abstract base class for datasets whose samples are rows of a table.

    Subclasses read their table(s), build :attr:`records` (one row per sample, with
    at least the columns ``path``, ``table`` and ``line``) and call
    :meth:`_set_records`; then implement :meth:`_load_sample`.

    .. versionadded:: 0.1
    """

    #: Class names in label order, or None for a dataset without class labels.
    classes: Sequence[str] | None = None

    def __init__(
        self,
        transforms: Callable[[Sample], Sample] | None = None,
        on_error: OnError = 'raise',
    ) -> None:
        """Initialize a new ImageTableDataset instance.

        Args:
            transforms: A function/transform that takes an input sample
                and returns a transformed version.
            on_error: ``'raise'`` to stop at the first bad sample with an error
                naming it, ``'skip'`` to leave bad samples out and count them in a
                warning. With ``'skip'`` every listed file is checked for existence
                when the dataset is created.

        Raises:
            ValueError: If *on_error* is not one of the accepted values.
        """
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.transforms = transforms
        self.on_error: OnError = on_error
        #: Samples skipped while loading (``on_error='skip'``): path -> reason.
        self.skipped: dict[str, str] = {}
        self.records = pd.DataFrame({'path': [], 'table': [], 'line': []})

    def _set_records(
        self, records: pd.DataFrame, problems: pd.Series | None = None
    ) -> None:
        """Install the sample table, handling rows with known problems.

        Args:
            records: One row per sample with columns ``path`` (image file),
                ``table`` (the file that lists it), ``line`` (its line in that
                file, the header being line 1) and any target columns.
            problems: Per row, an empty string or a description of what is wrong
                with it, written ``'<kind>: <detail>'`` (for example
                ``"invalid label: 7 is not a class index in [0, 4]"``).

        Raises:
            InvalidSampleError: If a row has a problem and *on_error* is
                ``'raise'`` (the message names the table, the line and the problem,
                and counts the other bad rows).
        """
        records = records.reset_index(drop=True)
        if problems is None:
            problems = pd.Series('', index=records.index, dtype=object)
        else:
            problems = problems.reset_index(drop=True).astype(object)
        if self.on_error == 'skip':
            missing = ~records['path'].map(os.path.isfile).astype(bool)
            problems[missing & (problems == '')] = 'image file missing'
        bad = (problems != '').to_numpy()
        if bad.any():
            where = np.flatnonzero(bad)
            first = records.iloc[where[0]]
            detail = (
                f"'{first['table']}', line {first['line']}: {problems.iat[where[0]]}"
                f" (image '{first['path']}')"
            )
            if self.on_error == 'raise':
                more = f'; {len(where) - 1} more bad row(s)' if len(where) > 1 else ''
                raise InvalidSampleError(f'{type(self).__name__}: {detail}{more}')
            counts = problems[bad].map(_problem_kind).value_counts()
            summary = ', '.join(f'{n} x {kind}' for kind, n in counts.items())
            warnings.warn(
                f'{type(self).__name__}: skipped {len(where)} of {len(records)} '
                f'listed samples ({summary}); first: {detail}',
                UserWarning,
                stacklevel=3,
            )
        self.records = records[~bad].reset_index(drop=True)

    def __len__(self) -> int:
        """Return the number of samples in the dataset.

        Returns:
            Length of the dataset.
        """
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        """Return a sample.

        Args:
            index: Index of the sample.

        Returns:
            The sample at that index (with ``on_error='skip'``, the next readable
            one if it cannot be read).

        Raises:
            IndexError: If *index* is out of range.
            FileNotFoundError: If the image file is missing (``on_error='raise'``).
            InvalidSampleError: If the sample cannot be used (``on_error='raise'``),
                or if no sample at all can be read (``on_error='skip'``).
        """
        length = len(self)
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f'index {index} out of range for {length} samples')
        if self.on_error == 'raise':
            sample = self._load_sample(index)
        else:
            sample = self._load_skipping(index)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _load_skipping(self, index: int) -> Sample:
        """Load the sample at *index*, or the next one that can be loaded.

        Args:
            index: Index of the sample.

        Returns:
            The first sample from *index* on (wrapping around) that loads.

        Raises:
            InvalidSampleError: If no sample can be loaded.
        """
        paths = self.records['path']
        length = len(self)
        for offset in range(length):
            i = (index + offset) % length
            path = paths.iat[i]
            if path in self.skipped:
                continue
            try:
                return self._load_sample(i)
            except (FileNotFoundError, InvalidSampleError) as e:
                self.skipped[path] = str(e)
                warnings.warn(
                    f'{type(self).__name__}: skipped a sample: {e}; '
                    f'{len(self.skipped)} sample(s) skipped so far',
                    UserWarning,
                    stacklevel=3,
                )
        raise InvalidSampleError(
            f'{type(self).__name__}: none of the {length} samples could be loaded'
        )

    def _where(self, index: int) -> str:
        """Describe where the sample at *index* is listed, for error messages.

        Args:
            index: Index of the sample.

        Returns:
            Text naming the image file, the table and the line.
        """
        record = self.records.iloc[index]
        return (
            f"'{record['path']}' (listed in '{record['table']}', line {record['line']})"
        )

    def _check_exists(self, index: int) -> str:
        """Return the image path of a sample, checking that the file exists.

        Args:
            index: Index of the sample.

        Returns:
            The path of the image file.

        Raises:
            FileNotFoundError: If the file does not exist (the message names the
                file and where it is listed).
        """
        path: str = self.records['path'].iat[index]
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Image file {self._where(index)} does not exist')
        return path

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample from the dataset.

        A sample with boxes (``'bbox_xyxy'``) is drawn with them and, if present,
        the predicted boxes (``'prediction_bbox_xyxy'``); any other with its label
        and prediction (``'label'``, ``'prediction'``), named by :attr:`classes`
        (see :func:`~explora_geo.datasets.plot.plot_rgb_sample`).

        Args:
            sample: A sample returned by :meth:`__getitem__`.
            show_titles: Flag indicating whether to show titles above each panel.
            suptitle: Optional string to use as a suptitle.

        Returns:
            A matplotlib Figure with the rendered sample.

        Raises:
            RGBBandsMissingError: If the sample's image has no R, G, B channels.
        """
        sample = {**sample, 'image': self._rgb(sample['image'])}
        return plot_rgb_sample(sample, self.classes, show_titles, suptitle)

    def _rgb(self, image: Tensor) -> Tensor:
        """Select the R, G, B channels of an image, in that order, for plotting.

        Args:
            image: An image of a sample, (C, H, W).

        Returns:
            The image, (3, H, W) if it is an RGB image (the default: unchanged).

        Raises:
            RGBBandsMissingError: If the image has no R, G, B channels.
        """
        return image

    @abc.abstractmethod
    def _load_sample(self, index: int) -> Sample:
        """Load the sample at *index*, before transforms.

        Args:
            index: Index of the sample.

        Returns:
            The sample.
        """


def _problem_kind(problem: str) -> str:
    """Shorten a problem description to its kind, for counting.

    Args:
        problem: Description of the problem with one row, ``'<kind>: <detail>'``.

    Returns:
        The kind.
    """
    return problem.split(':')[0]
