"""The masked-autoencoder objective: augmentation, masking ratio, forward, loss.

The network (encoder, decoder, per-sample random masking and the
reconstruction loss) lives with the models, in :mod:`explora_geo.models.mae`:
it is the published MAE architecture. :class:`MAEObjective` is what MAE
pre-training does with it: augment the batch on the device (time steps of a
series share one draw), pass the model-specific inputs along, and return the
model's reconstruction loss at the configured masking ratio.

.. versionadded:: 0.1
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchgeo.tasks.mae import mae_augmentation

from ..models.mae import MAEOutput, MaskedAutoencoder
from ..sensors import IMAGENET_RGB


@dataclass(frozen=True)
class MAEConfig:
    """Hyperparameters of the MAE objective (defaults: MAE's).

    Attributes:
        mask_ratio: Fraction of patches removed.
        norm_pix_loss: Normalise each target patch (MAE's ``--norm_pix_loss``).

    .. versionadded:: 0.1
    """

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        """Check the masking ratio.

        Raises:
            ValueError: If *mask_ratio* is outside ``[0, 1)``.
        """
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f'mask_ratio must be in [0, 1), got {self.mask_ratio}')


class MAEObjective(nn.Module):
    """Masked-autoencoder pre-training of a :class:`MaskedAutoencoder`.

    The network is not registered as a submodule (its owner registers it, so
    its tensors are checkpointed once under the owner's name).

    .. versionadded:: 0.1
    """

    #: Batch keys passed on to the model besides the image.
    extra_inputs: tuple[str, ...] = ('timestamps',)

    def __init__(
        self,
        network: MaskedAutoencoder,
        config: MAEConfig,
        img_size: int,
        transform: nn.Module | None = None,
    ) -> None:
        """Initialize a new MAEObjective instance.

        Args:
            network: The masked autoencoder (its ``norm_pix_loss`` set from
                *config* when it was built).
            config: Masking ratio and loss.
            img_size: Output size of the default augmentation.
            transform: Augmentation applied on the device to ``(B, C, H, W)``
                images; default: TorchGeo's MAE augmentation (random resized
                crop to *img_size*, horizontal and vertical flips).
                ``nn.Identity()`` trains on the images as they come.
        """
        super().__init__()
        self.config = config
        self._network = (network,)
        self.transform = (
            transform if transform is not None else mae_augmentation(img_size)
        )

    @property
    def network(self) -> MaskedAutoencoder:
        """The masked autoencoder."""
        return self._network[0]

    def augment(self, images: Tensor) -> Tensor:
        """Apply :attr:`transform`; the time steps of ``(B, T, C, H, W)`` share it.

        Args:
            images: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` images.

        Returns:
            Augmented float images of the same layout.
        """
        images = images.float()
        with torch.no_grad():
            if images.ndim == 5:
                b, t, c, h, w = images.shape
                out = self.transform(images.reshape(b, t * c, h, w))
                return out.reshape(b, t, c, *out.shape[-2:])
            out = self.transform(images)
        assert isinstance(out, Tensor)
        return out

    @staticmethod
    def check_scale(images: Tensor) -> None:
        """Check that *images* hold values in ``[0, 1]``, as the objective takes them.

        Args:
            images: The batch's images, before augmentation.

        Raises:
            ValueError: If values lie outside ``[0, 1]``.
        """
        low, high = torch.aminmax(images.detach())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f'the MAE objective expects images scaled to [0, 1], got values in '
                f'[{float(low):.4g}, {float(high):.4g}]; hand it unnormalised images '
                "(the datamodule's unlabeled=True mode) and leave normalisation to it"
            )

    @staticmethod
    def normalize(images: Tensor) -> Tensor:
        """Standardise RGB as MAE's reference code does, after the crops.

        Three-band images are normalised with the ImageNet statistics of the
        source MAE; other band sets (Sentinel-2 scaled by SatMAE's formula) are
        taken as they are, as in SatMAE.

        Args:
            images: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` in ``[0, 1]``.

        Returns:
            The images the model takes.
        """
        if images.shape[-3] != 3:
            return images
        mean, std = IMAGENET_RGB.unit_stats()
        shape = (3, 1, 1)
        m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
        s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
        return (images - m) / s

    def forward(self, batch: Mapping[str, Any], augment: bool = True) -> MAEOutput:
        """Mask, reconstruct and score one batch.

        Args:
            batch: A dict with ``'image'`` (and e.g. ``'timestamps'``).
            augment: Augment the images first (training) or not (validation).

        Returns:
            The model's loss, predictions and mask.
        """
        images = batch['image'].float()
        extra = {k: batch[k] for k in self.extra_inputs if k in batch}
        self.check_scale(images)
        if augment:
            images = self.augment(images)
        images = self.normalize(images)
        output: MAEOutput = self.network(
            images.float(), mask_ratio=self.config.mask_ratio, **extra
        )
        return output
