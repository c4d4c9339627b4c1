"""DinoV2 multi-crop augmentation on batches, on the device, with kornia.

Each image gives two global crops and ``n`` local crops. Every crop is a
bicubic random resized crop (global scale ``[0.32, 1]``, local ``[0.05, 0.32]``)
with a horizontal flip (p 0.5), then colour jitter (brightness 0.4, contrast
0.4, saturation 0.2, hue 0.1; p 0.8) and grayscale (p 0.2), then Gaussian blur
(9x9 kernel, sigma in ``[0.1, 2]``) and, on the second global crop only,
solarisation (threshold 128 of 255, p 0.2); finally normalisation.

Blur probabilities: DinoV2's ``GaussianBlur(p)`` hands ``1 - p`` to
``torchvision.transforms.RandomApply``, which applies with probability ``p``,
so its nominal ``(1.0, 0.1, 0.5)`` for (first global, second global, local)
crops are applied with probability ``(0.0, 0.9, 0.5)``. Those applied
probabilities trained the released DinoV2 and ExPLoRA checkpoints and are the
defaults here.

Parameters are drawn independently per crop (kornia draws per sample); DinoV2
applies the same operations with torchvision to PIL images one at a time, so
the two agree in distribution, not pixel for pixel.

.. versionadded:: 0.1
"""

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

#: Solarisation threshold of DinoV2 (128 on 8-bit images).
SOLARIZE_THRESHOLD = 128 / 255


class MultiCrop(nn.Module):
    """Two global and ``num_local_crops`` local DinoV2 crops of a batch.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        global_crop_size: int = 224,
        local_crop_size: int = 98,
        num_local_crops: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        blur_p: tuple[float, float, float] = (0.0, 0.9, 0.5),
        solarize_p: float = 0.2,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        """Initialize a new MultiCrop instance.

        Args:
            global_crop_size: Side of the global crops in pixels.
            local_crop_size: Side of the local crops in pixels.
            num_local_crops: Local crops per image (0 for none).
            global_crops_scale: Area range of the global crops.
            local_crops_scale: Area range of the local crops.
            blur_p: Probability that blur is applied to the first global, second
                global and local crops.
            solarize_p: Probability of solarising the second global crop.
            mean: Per-channel mean of the final normalisation.
            std: Per-channel standard deviation of the final normalisation.

        Raises:
            ValueError: If a size, count or probability is out of range, or
                *mean* / *std* do not have 3 values.
        """
        super().__init__()
        if global_crop_size < 1 or local_crop_size < 1 or num_local_crops < 0:
            raise ValueError(
                'crop sizes must be >= 1 and num_local_crops >= 0, got '
                f'global_crop_size={global_crop_size}, local_crop_size={local_crop_size}, '
                f'num_local_crops={num_local_crops}'
            )
        if any(not 0 <= p <= 1 for p in (*blur_p, solarize_p)):
            raise ValueError(
                f'probabilities must be in [0, 1], got blur_p={blur_p}, solarize_p={solarize_p}'
            )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(
                'DinoV2 colour augmentation works on RGB images: mean and std need 3 '
                f'values, got {len(mean)} and {len(std)}'
            )
        self.num_local_crops = num_local_crops
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size

        def crop(size: int, scale: tuple[float, float]) -> list[nn.Module]:
            return [
                K.RandomResizedCrop((size, size), scale=scale, resample='bicubic'),
                K.RandomHorizontalFlip(p=0.5),
            ]

        def colour() -> list[nn.Module]:
            return [
                K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
                K.RandomGrayscale(p=0.2),
            ]

        def blur(p: float) -> list[nn.Module]:
            return [K.RandomGaussianBlur((9, 9), (0.1, 2.0), p=p)] if p > 0 else []

        #: The final normalisation, also for images given to the teacher as they are.
        self.normalize = K.Normalize(mean=tuple(mean), std=tuple(std))
        normalize = self.normalize
        self.global1 = K.ImageSequential(
            *crop(global_crop_size, global_crops_scale),
            *colour(),
            *blur(blur_p[0]),
            normalize,
        )
        solarize = K.RandomSolarize(
            thresholds=(SOLARIZE_THRESHOLD, SOLARIZE_THRESHOLD),
            additions=(0.0, 0.0),
            p=solarize_p,
        )
        self.global2 = K.ImageSequential(
            *crop(global_crop_size, global_crops_scale),
            *colour(),
            *blur(blur_p[1]),
            solarize,
            normalize,
        )
        self.local = K.ImageSequential(
            *crop(local_crop_size, local_crops_scale),
            *colour(),
            *blur(blur_p[2]),
            normalize,
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Crop and augment a batch.

        Args:
            images: ``(B, C, H, W)`` with values in ``[0, 1]`` (the colour
                operations assume that range; normalisation comes last).

        Returns:
            Global crops ``(2 B, C, G, G)`` (first crops of all images, then the
            second ones) and local crops ``(n B, C, L, L)`` in the same
            crop-major order, or ``None`` when ``num_local_crops`` is 0. Both in
            float32.

        Raises:
            ValueError: If *images* is not a batch of RGB images in ``[0, 1]``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f'expected RGB images of shape (B, 3, H, W), got {tuple(images.shape)}'
            )
        low, high = torch.aminmax(images.detach())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f'multi-crop expects images scaled to [0, 1], got values in '
                f'[{float(low):.4g}, {float(high):.4g}]; scale them first (e.g. '
                'divide 8-bit images by 255) and leave normalisation to the crops'
            )
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = images.float()
            global_crops = torch.cat((self.global1(x), self.global2(x)))
            local_crops = None
            if self.num_local_crops:
                local_crops = self.local(x.repeat(self.num_local_crops, 1, 1, 1))
        return global_crops, local_crops
