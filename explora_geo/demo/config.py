"""Sizes and schedule of the demo.

.. versionadded:: 0.1
"""

from dataclasses import dataclass
from typing import Any

#: Land-cover classes of the demo's labels, in label order.
CLASSES = ('water', 'dense vegetation', 'marsh / sparse vegetation', 'bare / built')


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and schedule of the demo (defaults: about 5 minutes on 2 CPU cores).

    Attributes:
        chip: Chip size in pixels (the models' input size).
        patch: ViT patch size.
        embed_dim: Width of the small source ViT.
        depth: Blocks of the small source ViT.
        heads: Attention heads.
        channel_embed_dim: Width of the group encoding of the group-channel ViT.
        decoder_dim: MAE decoder width.
        decoder_depth: MAE decoder blocks.
        decoder_heads: MAE decoder heads.
        source_steps: Optimiser steps of the source MAE on RGB photographs.
        source_lr: Its peak learning rate.
        explora_steps: Optimiser steps of ExPLoRA pre-training.
        explora_lr: Its peak learning rate.
        lora_rank: LoRA rank of ExPLoRA (encoder and decoder).
        batch_size: Pre-training batch size.
        finetune_epochs: Epochs of LoRA fine-tuning.
        finetune_rank: LoRA rank of fine-tuning.
        finetune_batch_size: Its batch size.
        finetune_base_lr: Its learning rate for a batch of 256, scaled
            linearly with the batch size as in the paper's protocol. The
            paper's 1e-3 (1.25e-4 at batch 32) does not move this model in the
            demo's few hundred steps (docs/demo.md); 2.4e-2 gives 3e-3.
        finetune_warmup_epochs: Its linear warm-up before the per-step cosine.
        finetune_weight_decay: Its AdamW weight decay.
        finetune_drop_path: Its stochastic-depth rate.
        map_stride: Pixels between the centres of neighbouring chips of the
            land-cover map (stage 5).
        precision: Lightning precision; matrices this small run faster in fp32
            than through bf16 autocast on CPU.
    """

    chip: int = 32
    patch: int = 8
    embed_dim: int = 128
    depth: int = 6
    heads: int = 4
    channel_embed_dim: int = 32
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    source_steps: int = 800
    source_lr: float = 1.5e-3
    explora_steps: int = 700
    explora_lr: float = 1e-3
    lora_rank: int = 8
    batch_size: int = 48
    finetune_epochs: int = 24
    finetune_rank: int = 8
    finetune_batch_size: int = 32
    finetune_base_lr: float = 2.4e-2
    finetune_warmup_epochs: float = 1.0
    finetune_weight_decay: float = 0.05
    finetune_drop_path: float = 0.2
    map_stride: int = 8
    precision: str = '32-true'

    def __post_init__(self) -> None:
        """Check the sizes that must divide each other.

        Raises:
            ValueError: Naming the field and the value expected.
        """
        if self.chip % self.patch:
            raise ValueError(
                f'chip ({self.chip}) must be a multiple of patch ({self.patch})'
            )
        if not 0 < self.map_stride <= self.chip:
            raise ValueError(
                f'map_stride must be in [1, chip={self.chip}], got {self.map_stride}'
            )

    @classmethod
    def fast(cls) -> 'DemoConfig':
        """A short schedule (about a minute) that exercises every stage."""
        return cls(
            source_steps=20,
            explora_steps=12,
            finetune_epochs=1,
            depth=2,
            batch_size=32,
            map_stride=16,
        )

    @property
    def finetune_lr(self) -> float:
        """Peak learning rate of fine-tuning: base x batch / 256."""
        return self.finetune_base_lr * self.finetune_batch_size / 256

    def source_kwargs(self) -> dict[str, Any]:
        """Sizes of the small RGB source MAE (:func:`~explora_geo.models.mae.create_mae`)."""
        return {
            **self.encoder_kwargs(),
            'decoder_embed_dim': self.decoder_dim,
            'decoder_depth': self.decoder_depth,
            'decoder_num_heads': self.decoder_heads,
        }

    def encoder_kwargs(self) -> dict[str, Any]:
        """Sizes of the encoder blocks, shared by the source and target models."""
        return {
            'patch_size': self.patch,
            'embed_dim': self.embed_dim,
            'depth': self.depth,
            'num_heads': self.heads,
        }

    def group_kwargs(self) -> dict[str, Any]:
        """Sizes of the group-channel ViT (the source blocks, plus group encodings)."""
        return {**self.encoder_kwargs(), 'channel_embed_dim': self.channel_embed_dim}

    def group_decoder_kwargs(self) -> dict[str, Any]:
        """Sizes of the group-channel MAE decoder."""
        return {
            'decoder_embed_dim': self.decoder_dim,
            'decoder_depth': self.decoder_depth,
            'decoder_num_heads': self.decoder_heads,
            'decoder_channel_embed_dim': self.decoder_dim // 4,
        }
