"""The tutorials of the documentation run as written, block after block."""

import re
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / 'docs' / 'tutorials').glob('*.md'))
BLOCK = re.compile(r'^```python\n(.*?)^```', re.MULTILINE | re.DOTALL)


def test_every_tutorial_has_code() -> None:
    assert len(TUTORIALS) >= 2
    for path in TUTORIALS:
        assert BLOCK.findall(path.read_text()), path


@pytest.mark.parametrize('path', TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {'__name__': '__tutorial__'}
    for i, code in enumerate(BLOCK.findall(path.read_text())):
        exec(compile(code, f'{path.name} block {i + 1}', 'exec'), namespace)
