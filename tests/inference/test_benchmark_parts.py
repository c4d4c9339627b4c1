"""The tile benchmark's ``stages`` and ``conversion`` parts run on a small raster.

``stages`` wraps pipeline internals by name: if one is renamed, this fails
here instead of in someone's benchmark run.
"""

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from explora_geo.inference import tiles

SCRIPT = Path(__file__).parents[2] / 'benchmarks' / 'tile_inference.py'


@pytest.fixture(scope='module')
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location('tile_inference_bench', SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _args(**kwargs: object) -> argparse.Namespace:
    """The script's options for a 512 px raster: 9 tiles in 3 batches, one run."""
    args = argparse.Namespace(
        size=512, tile=256, overlap=32, batch=4, compress_level=None, repeats=1
    )
    args.stages_output = 'classes'
    vars(args).update(kwargs)
    return args


@pytest.mark.parametrize('output', ['classes', 'scores'])
def test_stages_times_every_stage_and_restores_the_pipeline(
    bench: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output: str,
) -> None:
    originals = {
        (owner, name): getattr(tiles if owner is None else getattr(tiles, owner), name)
        for owner, name, _ in bench.STAGES
    }
    bench.stages(_args(stages_output=output), tmp_path)
    table = capsys.readouterr().out
    rows = [
        line
        for line in table.splitlines()
        if line.startswith('| ') and not line.startswith(('| ---', '| thread'))
    ]
    stages = {line.split(' | ')[1] for line in rows}
    # 9 tiles of 256 px in 3 batches: every stage ran.
    assert stages == {label for _, _, label in bench.STAGES}
    reader = next(line for line in rows if 'tile-reader-0' in line)
    assert reader.split(' | ')[2] == '2'  # batches 2 and 3 (the first: main thread)
    for (owner, name), original in originals.items():
        holder = tiles if owner is None else getattr(tiles, owner)
        assert getattr(holder, name) is original
    assert list(tmp_path.iterdir()) == []


def test_conversion_variants_agree(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.conversion(_args())  # asserts that two variants compute the same input
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('| ') and not line.startswith(('| ---', '| variant'))
    ]
    assert len(rows) == 5
    assert all(float(line.rsplit('|', 2)[1]) > 0 for line in rows)
