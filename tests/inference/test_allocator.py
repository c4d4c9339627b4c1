import platform
import sys
from pathlib import Path

import pytest

import explora_geo.inference.allocator as allocator
import explora_geo.inference.cli as inference_cli
from explora_geo.cli import main
from explora_geo.inference import tune_allocator


class FakeLibc:
    """Records ``mallopt`` calls; answers *answer* to each."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return self.answer

        self.mallopt = mallopt


@pytest.fixture
def fake_glibc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    libc = FakeLibc()
    monkeypatch.setattr(allocator.ctypes, 'CDLL', lambda name: libc)
    monkeypatch.setattr(allocator.sys, 'platform', 'linux')
    monkeypatch.setattr(allocator.platform, 'libc_ver', lambda: ('glibc', '2.36'))
    for name in allocator.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return libc


def test_sets_trim_then_mmap_threshold_in_bytes(fake_glibc: FakeLibc) -> None:
    assert tune_allocator() is True
    assert fake_glibc.calls == [(-1, 256 * 2**20), (-3, 32 * 2**20)]
    fake_glibc.calls.clear()
    assert tune_allocator(trim_mb=64, mmap_mb=8) is True
    assert fake_glibc.calls == [(-1, 64 * 2**20), (-3, 8 * 2**20)]


def test_a_refused_value_is_reported(fake_glibc: FakeLibc) -> None:
    fake_glibc.answer = 0
    assert tune_allocator() is False


@pytest.mark.parametrize('name', allocator.ENVIRONMENT)
def test_the_users_environment_stands(
    fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, '1048576')
    assert tune_allocator() is False
    assert fake_glibc.calls == []


def test_other_c_libraries_are_left_alone(
    fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(allocator.platform, 'libc_ver', lambda: ('', ''))
    assert tune_allocator() is False
    monkeypatch.setattr(allocator.platform, 'libc_ver', lambda: ('glibc', '2.36'))
    monkeypatch.setattr(allocator.sys, 'platform', 'darwin')
    assert tune_allocator() is False
    assert fake_glibc.calls == []


def test_a_libc_without_mallopt(
    fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(allocator.ctypes, 'CDLL', lambda name: object())
    assert tune_allocator() is False


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'trim_mb': 0}, 'trim_mb must be a positive number of MB, got 0'),
        ({'mmap_mb': -1}, 'mmap_mb must be a positive number of MB, got -1'),
        ({'mmap_mb': 1.5}, 'mmap_mb must be a positive number of MB, got 1.5'),
        ({'trim_mb': True}, 'trim_mb must be a positive number of MB, got True'),
    ],
)
def test_bad_thresholds(fake_glibc: FakeLibc, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tune_allocator(**kwargs)
    assert fake_glibc.calls == []


@pytest.mark.skipif(
    not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
    reason='needs glibc',
)
def test_real_glibc_takes_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in allocator.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert tune_allocator() is True


def test_predict_tunes_the_allocator_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events: list[str] = []
    monkeypatch.setattr(inference_cli, 'tune_allocator', lambda: events.append('tune'))

    def load_task(path: object) -> None:
        events.append('load')
        raise RuntimeError('stop here')

    monkeypatch.setattr(inference_cli, 'load_task', load_task)
    raster = tmp_path / 'in.tif'
    raster.touch()
    with pytest.raises(RuntimeError, match='stop here'):
        main(['predict', str(tmp_path / 'm.ckpt'), str(raster), '-o', 'out.tif'])
    assert events == ['tune', 'load']
