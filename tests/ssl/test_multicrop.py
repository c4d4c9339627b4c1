import kornia.augmentation as K
import pytest
import torch

from explora_geo.sensors import IMAGENET_RGB
from explora_geo.ssl.multicrop import SOLARIZE_THRESHOLD, MultiCrop


def step(seq: torch.nn.Sequential, index: int) -> K.AugmentationBase2D:
    """Operation *index* of a kornia sequence."""
    module = seq[index]
    assert isinstance(module, K.AugmentationBase2D), type(module)
    return module


def kinds(seq: torch.nn.Sequential) -> dict[str, float]:
    ops = [step(seq, i) for i, _ in enumerate(seq.children())]
    return {type(m).__name__: float(m.p) for m in ops}


def test_shapes_and_crop_major_order() -> None:
    torch.manual_seed(0)
    crop = MultiCrop(global_crop_size=28, local_crop_size=14, num_local_crops=3)
    images = torch.rand(2, 3, 40, 40)
    global_crops, local_crops = crop(images)
    assert global_crops.shape == (4, 3, 28, 28)
    assert local_crops is not None and local_crops.shape == (6, 3, 14, 14)
    assert global_crops.dtype == local_crops.dtype == torch.float32
    # Crop-major: image i of crop c is row c * B + i. A constant image stays
    # constant under every operation, so each row identifies its source image.
    images = torch.stack([torch.full((3, 40, 40), 0.2), torch.full((3, 40, 40), 0.9)])
    crop = MultiCrop(
        28, 14, 3, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0, mean=(0, 0, 0), std=(1, 1, 1)
    )
    # no colour jitter
    step(crop.global1, 2).p = step(crop.global2, 2).p = step(crop.local, 2).p = 0.0
    global_crops, local_crops = crop(images)
    assert local_crops is not None
    src = [round(float(c.mean()), 3) for c in (*global_crops, *local_crops)]
    assert src == [0.2, 0.9] * 5


def test_dinov2_operations() -> None:
    crop = MultiCrop()
    assert step(crop.global1, 0).flags['size'] == (224, 224)
    assert step(crop.local, 0).flags['size'] == (98, 98)
    assert step(crop.global1, 0).flags['resample'].name == 'BICUBIC'
    # Applied probabilities of DinoV2's blur: (0.0, 0.9, 0.5); solarise on the
    # second global crop only.
    assert kinds(crop.global1) == {
        'RandomResizedCrop': 1.0,
        'RandomHorizontalFlip': 0.5,
        'ColorJitter': 0.8,
        'RandomGrayscale': 0.2,
        'Normalize': 1.0,
    }
    assert kinds(crop.global2) == {
        'RandomResizedCrop': 1.0,
        'RandomHorizontalFlip': 0.5,
        'ColorJitter': 0.8,
        'RandomGrayscale': 0.2,
        'RandomGaussianBlur': 0.9,
        'RandomSolarize': 0.2,
        'Normalize': 1.0,
    }
    assert kinds(crop.local)['RandomGaussianBlur'] == 0.5
    assert 'RandomSolarize' not in kinds(crop.local)


def test_solarize_threshold_is_dinov2s() -> None:
    solarize = next(m for m in MultiCrop().global2 if isinstance(m, K.RandomSolarize))
    solarize.p = 1.0
    x = (
        torch.tensor([127, 128, 200], dtype=torch.float32)
        .div(255)
        .view(1, 1, 1, 3)
        .expand(1, 3, 1, 3)
    )
    out = solarize(x.contiguous())
    # PIL/torchvision: pixels >= 128 are inverted.
    torch.testing.assert_close(
        out[0, 0, 0], torch.tensor([127, 255 - 128, 255 - 200]) / 255
    )
    assert SOLARIZE_THRESHOLD == 128 / 255


def test_normalisation_and_no_local_crops() -> None:
    torch.manual_seed(0)
    crop = MultiCrop(28, 14, 0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)
    for seq in (crop.global1, crop.global2):
        step(seq, 2).p = step(seq, 3).p = 0.0  # no colour jitter, no grayscale
    images = torch.full((2, 3, 32, 32), 0.5)
    global_crops, local_crops = crop(images)
    assert local_crops is None
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_RGB.unit_stats())
    torch.testing.assert_close(global_crops, ((0.5 - mean) / std).expand(4, 3, 28, 28))


def test_runs_in_float32_under_autocast() -> None:
    crop = MultiCrop(28, 14, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        global_crops, local_crops = crop(torch.rand(2, 3, 32, 32))
    assert global_crops.dtype == torch.float32
    assert local_crops is not None and local_crops.dtype == torch.float32


def test_errors() -> None:
    crop = MultiCrop(28, 14, 2)
    with pytest.raises(
        ValueError, match=r'scaled to \[0, 1\], got values in \[0, 255\]'
    ):
        crop(torch.linspace(0, 255, 3 * 32 * 32).view(1, 3, 32, 32))
    with pytest.raises(
        ValueError, match=r'RGB images of shape \(B, 3, H, W\), got \(1, 4, 8, 8\)'
    ):
        crop(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match='mean and std need 3 values, got 4 and 4'):
        MultiCrop(mean=(0,) * 4, std=(1,) * 4)
    with pytest.raises(ValueError, match=r'probabilities must be in \[0, 1\]'):
        MultiCrop(solarize_p=2.0)
    with pytest.raises(ValueError, match='num_local_crops >= 0'):
        MultiCrop(num_local_crops=-1)
