"""Atomic file writes: a file appears complete under its name, or not at all.

Every file explora_geo writes (checkpoints, Δ_T files, rasters, vectors,
reports) goes through :func:`atomic_path` or :func:`write_atomic`: the content
is written to a temporary file in the destination folder, then renamed over
the destination, so a crash or an error never leaves a truncated file and
readers never see one being written.

The file gets the permissions of any newly created file (``0o666`` less the
process umask), not the ``0o600`` of :func:`tempfile.mkstemp`, so results in a
shared folder stay readable by the team.

.. versionadded:: 0.1
"""

import contextlib
import glob
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ('atomic_path', 'remove_stale', 'write_atomic')


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files for *path* left by processes that no longer exist.

    Temporary names carry the writing process's id
    (``.STEM.PID-TOKEN.tmpSUFFIX``), so a killed run's leftovers (and their
    sidecars) are told apart from those of runs still writing.

    Args:
        path: A destination file.

    Returns:
        The files deleted.
    """
    path = Path(path)
    pattern = re.compile(rf'\.{re.escape(path.stem)}\.(\d+)-[0-9a-f]+\.tmp')
    removed = []
    for candidate in path.parent.glob(f'.{glob.escape(path.stem)}.*.tmp*'):
        match = pattern.match(candidate.name)
        if match and not _alive(int(match[1])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _reserve(path: Path) -> tuple[Path, int]:
    """Create an empty, unique temporary file next to *path*.

    Returns:
        The temporary path and the permission bits the system gave it
        (``0o666`` less the umask).
    """
    while True:
        token = f'{os.getpid()}-{secrets.token_hex(4)}'
        tmp = path.with_name(f'.{path.stem}.{token}.tmp{path.suffix}')
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        try:
            mode = os.fstat(fd).st_mode & 0o777
        finally:
            os.close(fd)
        return tmp, mode


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path that becomes *path* when the block finishes without error.

    The temporary file lives in the destination folder (so the final rename is
    atomic) and keeps *path*'s suffix (writers such as GDAL pick formats by
    suffix); it does not exist when the block starts, so writers that refuse
    to overwrite can create it. Missing parent folders are created. On any
    error the temporary file and sidecars a writer left next to it (GDAL's
    ``.aux.xml``, SQLite journals) are deleted and *path* is left untouched.
    Its name carries the process id, so temporary files of killed runs are
    removed by the next write of *path* (:func:`remove_stale`).

    Args:
        path: The destination file.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp, mode = _reserve(path)
    tmp.unlink()
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f'nothing was written to {tmp} for {path}')
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for extra in tmp.parent.glob(f'{glob.escape(tmp.name)}*'):
            extra.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write a file atomically with *write*.

    Example: ``write_atomic(out, lambda tmp: torch.save(obj, tmp))``.

    Args:
        path: The destination file.
        write: Writes the whole content to the path it is given.

    Returns:
        *path* as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)
