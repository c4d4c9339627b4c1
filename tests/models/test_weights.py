"""One resolver of ``weights=`` arguments and one strict loader."""

from pathlib import Path

import pytest
import timm
import torch

from explora_geo.models import (
    ExPLoRAViTL16MAEWeights,
    ExPLoRAWeightsEnum,
    TemporalViT,
    resolve_weights,
)
from explora_geo.models.checkpoints import load_into
from explora_geo.models.weights import WEIGHT_ENUMS
from tests.data.checkpoints import layouts


def test_resolve_none_path_name_and_enum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_weights(None) is None
    assert resolve_weights(False) is None
    sd = layouts.dinov2(grid=2)
    path = tmp_path / 'w.pth'
    torch.save(sd, path)
    checkpoint, source = resolve_weights(str(path))  # type: ignore[misc]
    assert source == str(path) and torch.equal(checkpoint['norm.bias'], sd['norm.bias'])
    # Names and members resolve to the same enum member; the encoder tensors
    # (get_state_dict) or, with whole=True, the file's whole contents.
    calls: list[tuple[str, str]] = []

    def fake_download(self: ExPLoRAWeightsEnum, *a: object, **k: object) -> dict:
        calls.append(('whole', str(self)))
        return {'model': {**sd, 'decoder_embed.weight': torch.zeros(1)}}

    monkeypatch.setattr(ExPLoRAWeightsEnum, 'get_checkpoint', fake_download)
    name = 'ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL'
    encoder, source = resolve_weights(name)  # type: ignore[misc]
    assert source == name and 'decoder_embed.weight' not in encoder
    whole, _ = resolve_weights(  # type: ignore[misc]
        ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL, whole=True
    )
    assert 'decoder_embed.weight' in whole['model']
    assert calls == [('whole', name)] * 2
    # True means the default.
    _, source = resolve_weights(True, ExPLoRAViTL16MAEWeights.MAE_IN1K_PIXEL)  # type: ignore[misc]
    assert source == name


def test_resolve_errors() -> None:
    with pytest.raises(ValueError, match='weights=True needs default pretrained'):
        resolve_weights(True)
    with pytest.raises(ValueError, match='neither a file nor known weights'):
        resolve_weights('nowhere.pth')
    with pytest.raises(TypeError, match='weights must be an enum member'):
        resolve_weights(3)


def test_one_registry_and_urls_from_it() -> None:
    # Every published URL of a registered model comes from the enums.
    urls = {m.url for e in WEIGHT_ENUMS for m in e}
    for name in timm.list_pretrained('explora_*'):
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None
        url = cfg.url
        assert not url or url in urls, name


def test_strict_loader_on_a_subset() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    expected = {'0.weight': model.get_parameter('0.weight')}
    load_into(model, {'0.weight': torch.ones(3, 2)}, expected=expected)
    assert torch.equal(model.get_parameter('0.weight'), torch.ones(3, 2))
    with pytest.raises(
        KeyError,
        match=r"src does not match the part: missing keys: \['0.weight'\]; unexpected keys: \['x'\]",
    ):
        load_into(
            model,
            {'x': torch.ones(1)},
            'src',
            expected=expected,
            target_name='the part',
        )
    with pytest.raises(
        ValueError,
        match=r'src: 0.weight has shape \(2, 2\), the model expects \(3, 2\)',
    ):
        load_into(model, {'0.weight': torch.ones(2, 2)}, 'src', expected=expected)


def test_temporal_vit_keeps_timm_signatures() -> None:
    model = timm.create_model(
        'explora_vitl_satmae_temporal',
        img_size=32,
        patch_size=8,
        embed_dim=64,
        time_embed_dim=8,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    assert isinstance(model, TemporalViT)
    x = torch.randn(1, 2, 3, 32, 32)
    stamps = torch.tensor([[[2016, 7, 14], [2017, 1, 0]]])
    assert model(x, timestamps=stamps).shape == (1, 3)
    with pytest.raises(ValueError, match=r'TemporalViT needs timestamps=\(B, T, 3\)'):
        model(x)
    with pytest.raises(
        TypeError, match=r"takes timestamps besides the images, got \['dates'\]"
    ):
        model(x, timestamps=stamps, dates=stamps)
