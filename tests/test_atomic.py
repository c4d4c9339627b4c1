import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from explora_geo.atomic import atomic_path, remove_stale, write_atomic


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_atomic_respects_the_umask(tmp_path: Path, umask: None) -> None:
    target = tmp_path / 'sub' / 'a.ckpt'
    out = write_atomic(target, lambda p: torch.save({'x': torch.ones(2)}, p))
    assert out == target
    assert (target.stat().st_mode & 0o777) == 0o644
    assert torch.equal(torch.load(target, weights_only=True)['x'], torch.ones(2))
    os.umask(0o027)
    other = write_atomic(tmp_path / 'b.txt', lambda p: p.write_text('b'))
    assert (other.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ['b.txt', 'sub']
    assert [p.name for p in target.parent.iterdir()] == ['a.ckpt']


def test_replaces_an_existing_file(tmp_path: Path, umask: None) -> None:
    target = tmp_path / 'a.txt'
    target.write_text('old')
    target.chmod(0o600)
    write_atomic(target, lambda p: p.write_text('new'))
    assert target.read_text() == 'new'
    assert (target.stat().st_mode & 0o777) == 0o644


def test_error_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / 'a.tif'
    target.write_text('old')

    def fail(p: Path) -> None:
        p.write_text('partial')
        p.with_name(p.name + '.aux.xml').write_text('sidecar')
        raise KeyError('boom')

    with pytest.raises(KeyError, match='boom'):
        write_atomic(target, fail)
    assert target.read_text() == 'old'
    assert [p.name for p in tmp_path.iterdir()] == ['a.tif']


def test_temporary_path_is_fresh_and_keeps_the_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / 'v.gpkg') as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == '.gpkg'
        assert not tmp.exists()
        tmp.write_bytes(b'1')
    assert (tmp_path / 'v.gpkg').read_bytes() == b'1'


def test_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'nothing was written .* for .*x\.pt'):
        write_atomic(tmp_path / 'x.pt', lambda p: None)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    target = tmp_path / 'map.tif'
    dead = tmp_path / '.map.999999999-0badf00d.tmp.tif'
    sidecar = tmp_path / '.map.999999999-0badf00d.tmp.tif.aux.xml'
    live = tmp_path / f'.map.{os.getpid()}-0badf00d.tmp.tif'
    other = tmp_path / '.other.999999999-0badf00d.tmp.tif'
    for path in (dead, sidecar, live, other):
        path.write_bytes(b'x')
    assert sorted(remove_stale(target)) == sorted([dead, sidecar])
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f'.map.{os.getpid()}-')
        tmp.write_bytes(b'done')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, 'map.tif']
    )
