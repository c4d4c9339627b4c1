"""Every recipe parses against the current task and datamodule signatures."""

from pathlib import Path

import pytest
from torchgeo.main import main

RECIPES = sorted((Path(__file__).parents[1] / 'recipes').glob('*.yaml'))


def test_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert 'fmow_sentinel_explora.yaml' in names
    assert len(RECIPES) >= 10


@pytest.mark.parametrize('recipe', RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(
    recipe: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    # --print_config validates every argument against the class signatures
    # without building the models or touching the data.
    with pytest.raises(SystemExit) as info:
        main(['fit', '--config', str(recipe), '--print_config'])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert 'class_path: explora_geo.' in printed
