"""ExPLoRA with the MAE objective (M-ExPLoRA).

The source MAE (encoder *and* decoder, e.g. ``mae_visualize_vit_large.pth``)
continues pre-training on target-domain images. The encoder gets the ExPLoRA
adapter (unfrozen blocks, LoRA on Q and V elsewhere, trainable norms and class
token); the decoder stays frozen except its norms, LoRA of rank
``decoder_lora_rank`` on its attention Q and V, and whatever the model lists in
:meth:`~explora_geo.models.mae.MaskedAutoencoder.decoder_trainable_patterns`
(e.g. the per-group prediction heads of SatMAE's group-channel MAE). The mask
token is frozen. Only the encoder is exported.

.. versionadded:: 0.1
"""

import fnmatch
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchgeo.tasks.mae import mae_augmentation
from torchvision.models._api import WeightsEnum

from ..models.mae import MaskedAutoencoder, create_mae
from ..peft import apply_explora, inject_qkv_lora
from .pretraining import ExPLoRAPretrainingTask


def freeze_decoder(
    mae: MaskedAutoencoder,
    rank: int,
    alpha: float = 1.0,
    targets: Sequence[str] = ('q', 'v'),
) -> None:
    """Freeze everything of *mae* outside its encoder, then add the decoder adapter.

    Args:
        mae: The masked autoencoder (its encoder is left as it is).
        rank: LoRA rank on the decoder attention (0: no LoRA).
        alpha: LoRA alpha.
        targets: Projections of the decoder's fused ``qkv`` with LoRA.
    """
    for name, param in mae.named_parameters():
        if not name.startswith('encoder.'):
            param.requires_grad_(False)
    if rank > 0:
        inject_qkv_lora(mae.decoder_blocks, rank, alpha, targets)
    patterns = mae.decoder_trainable_patterns()
    for name, param in mae.named_parameters():
        if not name.startswith('encoder.') and any(
            fnmatch.fnmatchcase(name, p) for p in patterns
        ):
            param.requires_grad_(True)


class ExPLoRAMAE(ExPLoRAPretrainingTask):
    """ExPLoRA extended pre-training with the masked-autoencoder objective.

    Works for every model registered in :data:`explora_geo.models.mae.MAE_MODELS`
    (RGB MAE, SatMAE group-channel and temporal MAEs). Batches are dicts with
    ``'image'``; keys in :attr:`extra_inputs` (``'timestamps'``) are passed
    to the model as keyword arguments.

    .. versionadded:: 0.1
    """

    ignore = ('weights', 'transform')

    #: Batch keys passed on to the model besides the image.
    extra_inputs: tuple[str, ...] = ('timestamps',)

    model: MaskedAutoencoder

    def __init__(
        self,
        model: str = 'explora_vitl_mae',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        img_size: int = 224,
        unfrozen_blocks: Sequence[int] = (0, -1),
        lora_rank: int = 32,
        lora_alpha: float = 1.0,
        lora_targets: Sequence[str] = ('q', 'v'),
        train_patch_embed: bool = False,
        train_pos_embed: bool = False,
        lr: float = 4.5e-4,
        lr_scaling: Literal['sqrt', 'linear', 'none'] = 'linear',
        reference_batch_size: int = 256,
        min_lr: float = 0.0,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        patch_embed_lr_mult: float = 1.0,
        model_kwargs: dict[str, Any] | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        decoder_lora_rank: int = 32,
        decoder_lora_alpha: float = 1.0,
        decoder_kwargs: dict[str, Any] | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        transform: nn.Module | None = None,
    ) -> None:
        """Initialize a new ExPLoRAMAE instance.

        Args:
            model: Registered MAE name (``'explora_vitl_mae'``, ...).
            weights: Source MAE checkpoint with its decoder: an enum member or
                its name, a path, ``True`` for the model's default
                (``mae_visualize_vit_*.pth``), or ``None`` for random weights.
            in_channels: Input channels.
            img_size: Input size after augmentation.
            unfrozen_blocks: Encoder blocks trained in full (default ``[1, L]``).
            lora_rank: LoRA rank of the other encoder blocks.
            lora_alpha: LoRA alpha (scaling alpha / rank).
            lora_targets: Projections of ``qkv`` with LoRA (encoder and decoder).
            train_patch_embed: Also train the patch embedding(s).
            train_pos_embed: Also train position / group encodings.
            lr: Base learning rate (MAE's ``blr``) for *reference_batch_size*.
            lr_scaling: Scaling of *lr* with the effective batch size (MAE:
                ``'linear'``, ``lr = blr * batch / 256``).
            reference_batch_size: Batch size *lr* is given for.
            min_lr: Final learning rate of the cosine schedule.
            weight_decay: AdamW weight decay.
            warmup_steps: Optimiser steps of linear warm-up (MAE: one epoch).
            patch_embed_lr_mult: Learning-rate multiplier of the patch embedding.
            model_kwargs: Extra arguments of the encoder (timm ``create_model``).
            mask_ratio: Fraction of patches removed.
            norm_pix_loss: Normalise each target patch (MAE's ``--norm_pix_loss``).
            decoder_lora_rank: LoRA rank on the decoder attention (0: none).
            decoder_lora_alpha: LoRA alpha of the decoder.
            decoder_kwargs: Decoder sizes (``decoder_embed_dim``,
                ``decoder_depth``, ``decoder_num_heads``) if not the model's.
            betas: AdamW betas (MAE: ``(0.9, 0.95)``).
            transform: Augmentation applied on the device to ``(B, C, H, W)``
                images; default: TorchGeo's MAE augmentation (random resized
                crop to *img_size*, horizontal and vertical flips). Pass
                ``nn.Identity()`` to train on the images as they come.
        """
        super().__init__(
            model=model,
            weights=weights,
            in_channels=in_channels,
            img_size=img_size,
            unfrozen_blocks=unfrozen_blocks,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            train_patch_embed=train_patch_embed,
            train_pos_embed=train_pos_embed,
            lr=lr,
            lr_scaling=lr_scaling,
            reference_batch_size=reference_batch_size,
            min_lr=min_lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            patch_embed_lr_mult=patch_embed_lr_mult,
            model_kwargs=model_kwargs,
        )
        self.transform = (
            transform if transform is not None else mae_augmentation(img_size)
        )

    def configure_models(self) -> None:
        """Build the MAE, load the source weights and apply both adapters."""
        h = self.hparams
        mae = create_mae(
            h['model'],
            weights=self.weights,
            img_size=h['img_size'],
            in_chans=h['in_channels'],
            norm_pix_loss=h['norm_pix_loss'],
            **(h['decoder_kwargs'] or {}),
            **(h['model_kwargs'] or {}),
        )
        apply_explora(mae.encoder, self.explora_config)
        freeze_decoder(
            mae, h['decoder_lora_rank'], h['decoder_lora_alpha'], h['lora_targets']
        )
        self.model = mae

    # A property, not a second registered submodule: the encoder's tensors
    # appear once in checkpoints, under ``model.encoder.``.
    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        """The adapted encoder (``model.encoder``), what gets exported."""
        return self.model.encoder

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW with MAE's betas, warm-up and cosine per step.

        Returns:
            Optimizer and per-step scheduler.
        """
        config = super().configure_optimizers()
        assert isinstance(config, dict)
        for group in config['optimizer'].param_groups:
            group['betas'] = tuple(self.hparams['betas'])
        return config

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

    def _step(self, batch: dict[str, Any], augment: bool) -> tuple[Tensor, int]:
        images = batch['image']
        extra = {k: batch[k] for k in self.extra_inputs if k in batch}
        if augment:
            images = self.augment(images)
        out = self.model(images.float(), mask_ratio=self.hparams['mask_ratio'], **extra)
        return out.loss, images.shape[0]

    def training_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Compute the reconstruction loss of one batch.

        Args:
            batch: A dict with ``'image'`` (and e.g. ``'timestamps'``).
            batch_idx: Index of the batch.
            dataloader_idx: Index of the dataloader.

        Returns:
            The loss.

        Raises:
            NonFiniteLossError: If the loss is NaN or infinite.
        """
        loss, batch_size = self._step(batch, augment=True)
        loss = self.check_finite(loss)
        self.log('train_loss', loss, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Log the reconstruction loss of un-augmented images.

        Args:
            batch: A dict with ``'image'`` (and e.g. ``'timestamps'``).
            batch_idx: Index of the batch.
            dataloader_idx: Index of the dataloader.
        """
        loss, batch_size = self._step(batch, augment=False)
        self.log('val_loss', loss, batch_size=batch_size)
