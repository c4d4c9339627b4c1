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


@pytest.mark.slow
def test_fmow_sentinel_recipe_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The headline recipe, end to end through TorchGeo's CLI, on the fake
    # fMoW-Sentinel files with a tiny group-channel ViT.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr('sys.argv', ['torchgeo'])
    root = Path(__file__).parent / 'data' / 'fmow_sentinel'
    main(
        [
            'fit',
            '--config',
            str(Path(__file__).parents[1] / 'recipes' / 'fmow_sentinel_explora.yaml'),
            '--trainer.fast_dev_run=2',
            '--trainer.accelerator=cpu',
            '--trainer.devices=1',
            '--trainer.logger=false',
            '--model.init_args.weights=null',
            '--model.init_args.model=explora_vitb_satmae_group',
            '--model.init_args.model_kwargs={depth: 2, embed_dim: 64, num_heads: 2, channel_embed_dim: 32}',
            '--model.init_args.decoder_kwargs={decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2, decoder_channel_embed_dim: 8}',
            f'--data.dict_kwargs.root={root}',
            '--data.init_args.batch_size=2',
            '--data.init_args.num_workers=0',
        ]
    )
    exports = tmp_path / 'outputs' / 'fmow_sentinel_explora' / 'exports'
    assert (exports / 'last_encoder.ckpt').is_file()
    assert (exports / 'last_delta.safetensors').is_file()
