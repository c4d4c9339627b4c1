"""ExPLoRA with the MAE objective (M-ExPLoRA).

The source MAE (encoder *and* decoder, e.g. ``mae_visualize_vit_large.pth``)
continues pre-training on target-domain images with the objective of
:class:`~explora_geo.ssl.mae.MAEObjective`. The encoder gets the ExPLoRA
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
from typing import Any

from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

from ..adapter import ExPLoRAConfig, inject_qkv_lora
from ..models.mae import MaskedAutoencoder, create_mae
from ..sensors import IMAGENET_RGB, Normalization
from ..ssl.mae import MAEConfig, MAEObjective
from .pretraining import ExPLoRAPretrainingTask, OptimizationConfig


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
    ``'image'``; keys in :attr:`~explora_geo.ssl.mae.MAEObjective.extra_inputs`
    (``'timestamps'``) are passed to the model as keyword arguments.

    .. versionadded:: 0.1
    """

    ignore = ('weights', 'transform')

    model: MaskedAutoencoder
    objective: MAEObjective
    objective_config_type = MAEConfig
    objective_config: MAEConfig

    def __init__(
        self,
        model: str = 'explora_vitl_mae',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        img_size: int = 224,
        adapter: ExPLoRAConfig = ExPLoRAConfig(unfrozen_blocks=(0, -1), rank=32),
        optimization: OptimizationConfig = OptimizationConfig(
            lr=4.5e-4,
            lr_scaling='linear',
            reference_batch_size=256,
            min_lr=0.0,
            betas=(0.9, 0.95),
        ),
        objective: MAEConfig = MAEConfig(),
        model_kwargs: dict[str, Any] | None = None,
        decoder_lora_rank: int = 32,
        decoder_lora_alpha: float = 1.0,
        decoder_kwargs: dict[str, Any] | None = None,
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
            adapter: What trains in the encoder (default M-[1,L]-r32: first and
                last blocks unfrozen, LoRA r32 on Q and V of the others).
            optimization: AdamW and its schedule (MAE's: ``blr`` 4.5e-4 scaled
                linearly per 256 images, betas ``(0.9, 0.95)``; warm-up of about
                one epoch is the recipe's to set).
            objective: Masking ratio and loss.
            model_kwargs: Extra arguments of the encoder (timm ``create_model``).
            decoder_lora_rank: LoRA rank on the decoder attention (0: none),
                on the adapter's ``targets``.
            decoder_lora_alpha: LoRA alpha of the decoder.
            decoder_kwargs: Decoder sizes (``decoder_embed_dim``,
                ``decoder_depth``, ``decoder_num_heads``) if not the model's.
            transform: Augmentation applied on the device to ``(B, C, H, W)``
                images; default: TorchGeo's MAE augmentation (random resized
                crop to *img_size*, horizontal and vertical flips). Pass
                ``nn.Identity()`` to train on the images as they come.
        """
        shared = (model, weights, in_channels, img_size, adapter, optimization)
        super().__init__(*shared, objective, model_kwargs)
        if transform is not None:
            self.objective.transform = transform

    def build_source(self) -> MaskedAutoencoder:
        """The source MAE with W_S, its decoder frozen but for the decoder adapter.

        Returns:
            The masked autoencoder.
        """
        h = self.hparams
        mae = create_mae(
            h['model'],
            weights=self.weights,
            norm_pix_loss=self.objective_config.norm_pix_loss,
            **(h['decoder_kwargs'] or {}),
            **self.source_kwargs(),
        )
        freeze_decoder(
            mae, h['decoder_lora_rank'], h['decoder_lora_alpha'], self.adapter.targets
        )
        return mae

    def build_objective(self) -> MAEObjective:
        """The MAE objective on the adapted network.

        Returns:
            The objective.
        """
        return MAEObjective(self.model, self.objective_config, self.hparams['img_size'])

    def input_normalization(self, data: Normalization) -> Normalization:
        """The datamodule's ``[0, 1]`` RGB scaling followed by ImageNet mean / std.

        Args:
            data: The datamodule's normalisation.

        Returns:
            A ``'standard'`` normalisation in raw units for 3-band ``'unit'``
            data (see :meth:`~explora_geo.ssl.mae.MAEObjective.normalize`), else
            *data*.
        """
        if data.kind != 'unit' or len(data.bands) != 3:
            return data
        mean, std = IMAGENET_RGB.unit_stats()
        return Normalization(
            'standard',
            data.bands,
            tuple(data.scale * m for m in mean),
            tuple(data.scale * s for s in std),
            data.scale,
        )

    @property
    def encoder(self) -> nn.Module:
        """The adapted encoder inside the MAE (``model.encoder``), what gets exported."""
        return self.model.encoder

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
        loss = self.check_finite(self.objective(batch).loss)
        size = batch['image'].shape[0]
        self.log('train_loss', loss, on_step=True, on_epoch=True, batch_size=size)
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
        loss = self.objective(batch, augment=False).loss
        self.log('val_loss', loss, batch_size=batch['image'].shape[0])
