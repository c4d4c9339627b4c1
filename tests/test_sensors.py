import pytest
import torch

from explora_geo.sensors import (
    FMOW_RGB,
    SENTINEL2,
    Normalization,
    band_indices,
    get_sensor,
)


def test_satmae_formula_on_selected_bands() -> None:
    x = torch.rand(2, 3, 4, 4) * 4000
    norm = SENTINEL2.normalization('satmae', ['B4', 'B8', 'B12'])
    mean = torch.tensor([1136.26026392, 1762.59530783, 1247.91870117]).view(3, 1, 1)
    std = torch.tensor([965.23119807, 1233.1492281, 1087.6020813]).view(3, 1, 1)
    expected = ((x - mean + 2 * std) / (4 * std)).clip(0, 1)
    torch.testing.assert_close(norm(x), expected)
    assert norm.output_range == (0.0, 1.0)


def test_standard_and_unit() -> None:
    x = torch.randint(0, 256, (3, 5, 5)).float()
    std_norm = FMOW_RGB.normalization('standard')
    mean, std = FMOW_RGB.unit_stats()
    expected = (x / 255 - torch.tensor(mean).view(3, 1, 1)) / (
        torch.tensor(std).view(3, 1, 1)
    )
    torch.testing.assert_close(std_norm(x), expected)
    assert std_norm.output_range is None
    torch.testing.assert_close(FMOW_RGB.normalization('unit')(x), x / 255)


def test_round_trip_and_select() -> None:
    norm = SENTINEL2.normalization('satmae')
    again = Normalization.from_dict(norm.to_dict())
    assert again == norm
    sub = norm.select(['B3', 'B2'])
    assert sub.bands == ('B3', 'B2')
    assert sub.mean == (SENTINEL2.mean[2], SENTINEL2.mean[1])
    unit = FMOW_RGB.normalization('unit').select(['B', 'R'])
    assert unit.bands == ('B', 'R') and unit.scale == 255


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"bands \['B13'\] are not among"):
        band_indices(SENTINEL2.bands, ['B2', 'B13'])
    with pytest.raises(ValueError, match='expects 13 channels'):
        SENTINEL2.normalization('satmae')(torch.zeros(1, 11, 2, 2))
    with pytest.raises(ValueError, match='one mean and one std per band'):
        Normalization('standard', ('a', 'b'), (1.0,), (1.0,))
    with pytest.raises(ValueError, match='unknown normalization kind'):
        Normalization('zscore', ('a',))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lacks \['bands'\]"):
        Normalization.from_dict({'kind': 'unit'})
    with pytest.raises(KeyError, match='known:'):
        get_sensor('landsat9')
    assert get_sensor('sentinel2') is SENTINEL2


def test_input_spec_round_trip() -> None:
    from explora_geo.sensors import InputSpec

    spec = InputSpec(
        SENTINEL2.normalization('satmae', ['B2', 'B3']), 96, 8, ('water', 'land')
    )
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.bands == ('B2', 'B3')
    assert InputSpec.from_dict(InputSpec().to_dict()) == InputSpec()


@pytest.mark.parametrize('kind', ['satmae', 'standard', 'unit'])
def test_apply_in_place_equals_call(kind: str) -> None:
    norm = Normalization(kind, ('B02', 'B03'), (900.0, 1100.0), (300.0, 450.0), 10000.0)  # type: ignore[arg-type]
    x = torch.rand(3, 2, 5, 7) * 4000
    expected = norm(x)
    y = x.clone()
    assert norm.apply_(y) is y
    assert torch.equal(y, expected)
    with pytest.raises(ValueError, match='floating-point'):
        norm.apply_(x.to(torch.int32))
    with pytest.raises(ValueError, match='expects 2 channels'):
        norm.apply_(torch.rand(1, 3, 4, 4))
