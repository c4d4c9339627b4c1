"""Tiny MAE models and data shared by the ExPLoRA MAE task tests.

``explora_test_tiny_vit`` is a timm-registered 2-block, 32-wide ViT/8 for 32 px
images, so that TorchGeo's tasks can build it by name; the same name is
registered as a masked autoencoder with a 16-wide, 2-block decoder.
``explora_test_tiny_vit_temporal`` is a masked autoencoder that takes
``(B, T, C, H, W)`` images and ``timestamps``, standing in for a temporal MAE.
"""

from typing import Any

import lightning
import pytest
import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from explora_geo.adapter import ExPLoRAConfig
from explora_geo.models.mae import MAEOutput, MaskedAutoencoderViT, register_mae
from explora_geo.ssl.mae import MAEConfig
from explora_geo.tasks.pretraining import OptimizationConfig
from tests.tasks.grouping import grouped

TINY = 'explora_test_tiny_vit'
TINY_TEMPORAL = 'explora_test_tiny_vit_temporal'
IMG = 32
ENCODER_KWARGS = {'patch_size': 8, 'embed_dim': 32, 'depth': 2, 'num_heads': 2}
DECODER_KWARGS = {'decoder_embed_dim': 16, 'decoder_depth': 2, 'decoder_num_heads': 2}


@register_model
def explora_test_tiny_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'):
        kwargs.pop(key, None)
    return VisionTransformer(**{**ENCODER_KWARGS, 'img_size': IMG, **kwargs})


@register_mae(TINY)
def tiny_mae(
    img_size: int = IMG,
    in_chans: int = 3,
    norm_pix_loss: bool = True,
    decoder_embed_dim: int = 16,
    decoder_depth: int = 2,
    decoder_num_heads: int = 2,
    **kwargs: Any,
) -> MaskedAutoencoderViT:
    encoder = timm.create_model(
        TINY, num_classes=0, img_size=img_size, in_chans=in_chans, **kwargs
    )
    return MaskedAutoencoderViT(
        encoder,
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        norm_pix_loss=norm_pix_loss,
    )


class TemporalTinyMAE(MaskedAutoencoderViT):
    """Reconstructs each frame of ``(B, T, C, H, W)``; records the timestamps."""

    last_timestamps: Tensor | None = None

    def forward(
        self, x: Tensor, mask_ratio: float = 0.75, **extra: Tensor
    ) -> MAEOutput:
        timestamps = extra['timestamps']
        assert timestamps.shape[:2] == x.shape[:2]
        self.last_timestamps = timestamps
        return super().forward(x.flatten(0, 1), mask_ratio)


@register_mae(TINY_TEMPORAL)
def tiny_temporal_mae(
    img_size: int = IMG, in_chans: int = 3, norm_pix_loss: bool = True
) -> TemporalTinyMAE:
    encoder = timm.create_model(
        TINY, num_classes=0, img_size=img_size, in_chans=in_chans
    )
    return TemporalTinyMAE(encoder, **DECODER_KWARGS, norm_pix_loss=norm_pix_loss)


class RandomImages(Dataset[dict[str, Tensor]]):
    """``n`` fixed random images (or time series with timestamps), ``repeat`` times."""

    def __init__(
        self,
        n: int = 8,
        channels: int = 3,
        frames: int = 0,
        nan: bool = False,
        repeat: int = 1,
    ) -> None:
        g = torch.Generator().manual_seed(0)
        shape = (n, frames, channels, IMG, IMG) if frames else (n, channels, IMG, IMG)
        self.images = torch.rand(shape, generator=g)
        if nan:
            self.images[..., 0, :, :] = float('nan')  # first channel
        self.timestamps = torch.randint(0, 12, (n, max(frames, 1), 3), generator=g)
        self.frames = frames
        self.repeat = repeat

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        i %= len(self.images)
        sample = {'image': self.images[i]}
        if self.frames:
            sample['timestamps'] = self.timestamps[i]
        return sample


def loader(batch_size: int = 4, **kwargs: Any) -> DataLoader[dict[str, Tensor]]:
    return DataLoader(RandomImages(**kwargs), batch_size=batch_size, shuffle=False)


def task_kwargs(**overrides: Any) -> dict[str, Any]:
    """ExPLoRAMAE arguments for the tiny model: M-[L] with LoRA r4 in between.

    Fields of the adapter, optimisation and objective configs may be given flat.
    """
    flat = {
        'model': TINY,
        'img_size': IMG,
        'unfrozen_blocks': (-1,),
        'rank': 4,
        'decoder_lora_rank': 4,
        'decoder_kwargs': dict(DECODER_KWARGS),
        **overrides,
    }
    return grouped(
        flat,
        ExPLoRAConfig(),
        OptimizationConfig(
            lr=4.5e-4,
            lr_scaling='linear',
            reference_batch_size=256,
            min_lr=0.0,
            betas=(0.9, 0.95),
        ),
        MAEConfig(),
    )


@pytest.fixture(autouse=True)
def single_thread() -> Any:
    """Tiny models train fastest on one thread (no OpenMP spinning on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Reseed(lightning.Callback):
    """Seed the global RNG from the step before each batch (masks, augmentation).

    Lightning does not restore RNG states on resume; seeding per step makes a
    run's randomness a function of the step alone.
    """

    def __init__(self, offset: int = 0, fixed: bool = False) -> None:
        self.offset = offset
        self.fixed = fixed

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        torch.manual_seed(self.offset + (0 if self.fixed else trainer.global_step))


def trainer(root: Any, **kwargs: Any) -> lightning.Trainer:
    args: dict[str, Any] = {
        'accelerator': 'cpu',
        'devices': 1,
        'logger': False,
        'enable_checkpointing': False,
        'enable_progress_bar': False,
        'enable_model_summary': False,
        'default_root_dir': root,
        **kwargs,
    }
    return lightning.Trainer(**args)
