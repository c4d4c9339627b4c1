"""The demo's stages after the source model: ExPLoRA, evaluation, fine-tuning, prediction.

.. versionadded:: 0.1
"""

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..adapter import ExPLoRAConfig
from ..atomic import atomic_path
from ..inference import RasterPrediction, predict_raster
from ..inference.cli import load_task
from ..models.mae import MaskedAutoencoder, create_mae
from ..models.satmae_group_mae import patchify_bands
from ..ssl.mae import MAEConfig
from ..tasks.callbacks import ExPLoRAExport
from ..tasks.classification import ClassificationTask
from ..tasks.explora_mae import ExPLoRAMAE
from ..tasks.pretraining import OptimizationConfig
from ..tasks.protocols import LoRAConfig, ProtocolConfig
from .config import CLASSES, DemoConfig
from .data import SCENE_NORMALIZATION, ChipGrid, LabelledChips, RandomChips

#: Fraction of patch tokens an MAE removes, in pre-training and evaluation.
MASK_RATIO = 0.75


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's notices and one deprecation of its own out of the demo's output.

    Lightning's informational lines (accelerators found, tips about its cloud
    services) are lowered to warnings-only while the block runs; the
    deprecation that Lightning's own ``_pytree`` module triggers in PyTorch
    (``isinstance(treespec, LeafSpec)``) concerns Lightning, not the user.

    Yields:
        Nothing.
    """
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                'ignore', message=r'`isinstance\(treespec, LeafSpec\)` is deprecated'
            )
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: Lightning's loggers under both of its package names (lightly imports
#: ``pytorch_lightning``, which then carries Lightning's notices).
_LIGHTNING_LOGGERS = (
    'lightning.pytorch',
    'lightning.fabric',
    'pytorch_lightning',
    'lightning_fabric',
)


@dataclass(frozen=True)
class Architecture:
    """Which models the demo builds, and from which source weights.

    Attributes:
        source_weights: Path or enum name of W_S.
        source_label: How the table names the source model.
        group_model: timm name of the multispectral (group-channel) ViT / MAE.
        rgb_model: timm name of the source RGB ViT.
        group_kwargs: Architecture arguments of the group-channel ViT.
        decoder_kwargs: Architecture arguments of its MAE decoder.
        rgb_kwargs: Architecture arguments of the RGB ViT.
        img_size: Input size of every model.
    """

    source_weights: str
    source_label: str
    group_model: str
    rgb_model: str
    img_size: int
    group_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    rgb_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pretrained:
    """What ExPLoRA pre-training produced.

    Attributes:
        task: The trained task (its ``model`` is the adapted MAE).
        initial: The group-channel MAE before ExPLoRA (W_S with new patch
            embeddings and prediction heads).
        encoder_ckpt: The merged encoder (``weights=<path>``).
        delta: The Δ_T file.
    """

    task: ExPLoRAMAE
    initial: MaskedAutoencoder
    encoder_ckpt: Path
    delta: Path


def pretrain_explora(
    config: DemoConfig,
    arch: Architecture,
    grid: ChipGrid,
    output: Path,
    seed: int,
    stage: str,
) -> Pretrained:
    """ExPLoRA M-[1,L]-r on unlabelled chips of the training blocks.

    The held-out chips are the validation set: their masked-reconstruction
    loss is logged (``logs/metrics.csv``) at the end of training.

    Args:
        config: Demo sizes and schedule.
        arch: The models.
        grid: The scene's chips.
        output: Folder of this seed's outputs.
        seed: Random seed.
        stage: Progress label.

    Returns:
        The trained task, the initial MAE and the exports.
    """
    lightning.seed_everything(seed, verbose=False)
    task = ExPLoRAMAE(
        model=arch.group_model,
        weights=arch.source_weights,
        in_channels=len(SCENE_NORMALIZATION.bands),
        img_size=arch.img_size,
        adapter=ExPLoRAConfig(
            unfrozen_blocks=(0, -1),
            rank=config.lora_rank,
            train_patch_embed=True,
            train_pos_embed=True,
        ),
        optimization=OptimizationConfig(
            lr=config.explora_lr,
            lr_scaling='none',
            min_lr=1e-5,
            warmup_steps=max(1, config.explora_steps // 10),
            betas=(0.9, 0.95),
        ),
        decoder_lora_rank=config.lora_rank,
        decoder_kwargs=arch.decoder_kwargs,
        model_kwargs=arch.group_kwargs,
        objective=MAEConfig(mask_ratio=MASK_RATIO),
    )
    initial = create_mae(
        arch.group_model,
        weights=arch.source_weights,
        img_size=arch.img_size,
        in_chans=len(SCENE_NORMALIZATION.bands),
        **arch.decoder_kwargs,
        **arch.group_kwargs,
    )
    chips = RandomChips(
        grid.normalized,
        config.chip,
        grid.train_positions(),
        config.explora_steps * config.batch_size,
        seed,
    )
    held_out = grid.stack(grid.normalized, 'test')
    exports = output / 'explora'
    # A new run replaces the logs of an earlier one in the same folder.
    shutil.rmtree(output / 'logs', ignore_errors=True)
    trainer = Trainer(
        max_epochs=1,
        max_steps=config.explora_steps,
        accelerator='cpu',
        precision=config.precision,  # type: ignore[arg-type]
        gradient_clip_val=3.0,
        logger=CSVLogger(output, name='logs', version=''),
        callbacks=[
            ExPLoRAExport(
                dirpath=exports, every_n_steps=max(1, config.explora_steps // 2)
            )
        ],
        default_root_dir=output,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=min(5, config.explora_steps),
    )
    print(
        f'{stage} ExPLoRA M-[1,L]-r{config.lora_rank} on '
        f'{config.explora_steps * config.batch_size} Sentinel-2 chips (seed {seed})'
    )
    trainer.fit(
        task,
        train_dataloaders=DataLoader(chips, batch_size=config.batch_size),
        val_dataloaders=DataLoader(
            LabelledChips(held_out, torch.zeros(len(held_out))), batch_size=256
        ),
    )
    return Pretrained(
        task, initial, exports / 'last_encoder.ckpt', exports / 'last_delta.safetensors'
    )


@torch.no_grad()
def reconstruction_error(mae: MaskedAutoencoder, chips: Tensor, seed: int) -> float:
    """Mean masked-patch loss over *chips* with seeded masks (the same for every model).

    Args:
        mae: The autoencoder.
        chips: ``(N, C, H, W)`` model input.
        seed: Seed of the masks.

    Returns:
        The mean of the batches' losses.
    """
    mae.eval()
    torch.manual_seed(seed)
    losses = [float(mae(b, mask_ratio=MASK_RATIO).loss) for b in chips.split(64)]
    return float(np.mean(losses))


@torch.no_grad()
def reconstruct(
    mae: MaskedAutoencoder, chips: Tensor, seed: int
) -> tuple[Tensor, Tensor]:
    """Pixels a group-channel MAE predicts for the removed patches, in input units.

    Predictions of a norm-pix MAE are per-patch standardised; they are mapped
    back with the mean and variance of the true patch (as MAE's own pictures
    do), per band group. Kept patches show the input.

    Args:
        mae: A group-channel MAE (``pred`` of shape ``(B, C_kept, L, p*p)``,
            ``mask`` of shape ``(B, G, L)``).
        chips: ``(B, C, H, W)`` model input with all bands.
        seed: Seed of the masks.

    Returns:
        The reconstructed chips ``(B, C, H, W)`` (bands the model drops are
        copied from the input) and the mask ``(B, G, H, W)`` (1 = removed).
    """
    mae.eval()
    torch.manual_seed(seed)
    out = mae(chips, mask_ratio=MASK_RATIO)
    embed: Any = mae.encoder.patch_embed
    p = int(embed.patch_size[0])
    b, _, h, w = chips.shape
    kept = [SCENE_NORMALIZATION.bands.index(band) for band in embed.bands]
    target = patchify_bands(chips[:, kept], p)  # (B, L, C_kept, p*p)
    pred = out.pred.permute(0, 2, 1, 3)  # (B, L, C_kept, p*p)
    mask = out.mask  # (B, G, L)
    result = target.clone()
    for g, group in enumerate(embed.groups):
        idx = [embed.bands.index(band) for band in group]
        true = target[:, :, idx].flatten(2)
        if getattr(mae, 'norm_pix_loss', False):
            # lightly's normalize_mean_var: unbiased variance, eps 1e-6.
            mean = true.mean(-1, keepdim=True)
            std = (true.var(-1, keepdim=True) + 1e-6).sqrt()
            guess = pred[:, :, idx].flatten(2) * std + mean
        else:
            guess = pred[:, :, idx].flatten(2)
        removed = mask[:, g, :, None].bool()
        result[:, :, idx] = torch.where(removed, guess, true).unflatten(
            2, (len(idx), -1)
        )
    grid = (h // p, w // p)
    image = chips.clone()
    patches = result.unflatten(1, grid).unflatten(-1, (p, p))  # B gh gw C p p
    image[:, kept] = patches.permute(0, 3, 1, 4, 2, 5).reshape(b, len(kept), h, w)
    pixel_mask = F.interpolate(mask.unflatten(2, grid).float(), scale_factor=p)
    return image, pixel_mask


@torch.no_grad()
def features(encoder: nn.Module, chips: Tensor) -> Tensor:
    """Class token concatenated with the mean patch token (frozen encoder).

    Args:
        encoder: A timm ViT.
        chips: ``(N, C, H, W)`` model input.

    Returns:
        ``(N, 2 * width)`` features.
    """
    encoder.eval()
    out = []
    for batch in chips.split(128):
        tokens: Tensor = encoder.forward_features(batch)  # type: ignore[operator]
        prefix = getattr(encoder, 'num_prefix_tokens', 1)
        out.append(torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=1))
    return torch.cat(out)


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, seed: int
) -> float:
    """Accuracy of an L2-regularised multinomial logistic regression on frozen features.

    Args:
        train_x: Training features.
        train_y: Training labels.
        test_x: Held-out features.
        test_y: Held-out labels.
        seed: Seed of the initial weights.

    Returns:
        Held-out accuracy in [0, 1].
    """
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = nn.Linear(train_x.shape[1], len(CLASSES))
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=0.5, max_iter=200)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (
            F.cross_entropy(probe(train_x), train_y) + 1e-3 * probe.weight.pow(2).sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((probe(test_x).argmax(1) == test_y).float().mean())


def finetune(
    weights: str,
    config: DemoConfig,
    arch: Architecture,
    data: tuple[Tensor, Tensor],
    path: Path,
    seed: int,
) -> ClassificationTask:
    """LoRA fine-tuning of a group-channel ViT on the chip labels.

    The paper's fine-tuning protocol: AdamW with weight decay, linear warm-up
    then per-step cosine, drop-path, learning rate scaled with the batch size
    (:class:`~explora_geo.demo.config.DemoConfig`). Every 6th training chip
    validates (logged only); held-out chips are not seen. The fine-tuned task is saved as
    a Lightning checkpoint that carries its input spec, so that
    ``explora-geo predict RASTER --checkpoint PATH`` needs no other option.

    Args:
        weights: The backbone's weights (a merged-encoder checkpoint).
        config: Demo sizes and schedule.
        arch: The models.
        data: Training chips and labels.
        path: Where to write the checkpoint.
        seed: Random seed.

    Returns:
        The fine-tuned task, in eval mode.
    """
    lightning.seed_everything(seed, verbose=False)
    train_x, train_y = data
    task = ClassificationTask(
        model=arch.group_model,
        weights=weights,
        in_channels=len(SCENE_NORMALIZATION.bands),
        num_classes=len(CLASSES),
        labels=list(CLASSES),
        finetune='lora',
        lora=LoRAConfig(rank=config.finetune_rank),
        lr=config.finetune_lr,
        protocol=ProtocolConfig(
            weight_decay=config.finetune_weight_decay,
            scheduler='cosine',
            warmup_epochs=config.finetune_warmup_epochs,
            drop_path_rate=config.finetune_drop_path,
        ),
        model_kwargs={**arch.group_kwargs, 'img_size': arch.img_size},
        normalization=SCENE_NORMALIZATION.to_dict(),
    )
    is_val = torch.arange(len(train_y)) % 6 == 5
    train = DataLoader(
        LabelledChips(train_x[~is_val], train_y[~is_val]),
        batch_size=config.finetune_batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(LabelledChips(train_x[is_val], train_y[is_val]), batch_size=256)
    trainer = Trainer(
        max_epochs=config.finetune_epochs,
        accelerator='cpu',
        precision=config.precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.fit(task, train_dataloaders=train, val_dataloaders=val)
    with atomic_path(path) as tmp:
        trainer.save_checkpoint(tmp)
    return task.eval()


@torch.no_grad()
def accuracy(model: nn.Module, chips: Tensor, labels: Tensor) -> float:
    """Accuracy of a classifier's arg-max predictions.

    Args:
        model: A classifier returning ``(B, classes)`` logits.
        chips: ``(N, C, H, W)`` model input.
        labels: ``(N,)`` true classes.

    Returns:
        Accuracy in [0, 1].
    """
    model.eval()
    predictions = torch.cat([model(b).argmax(1) for b in chips.split(256)])
    return float((predictions == labels).float().mean())


def predict_scene(
    checkpoint: Path,
    raster: Path,
    output: Path,
    stride: int,
    vectors: Path | None = None,
) -> RasterPrediction:
    """Land-cover map of a whole raster from a fine-tuned classifier's checkpoint.

    The checkpoint is loaded and run exactly as ``explora-geo predict CKPT
    RASTER -o OUT`` does: its recorded bands, normalisation and input size
    drive the tiled prediction. Chips of the model's input size, *stride*
    pixels apart, give one output pixel each: a Cloud-Optimised GeoTIFF of
    class indices in the raster's CRS.

    Args:
        checkpoint: A checkpoint written by :func:`finetune`.
        raster: The scene.
        output: The class map to write.
        stride: Pixels between neighbouring chips (the map's pixel size).
        vectors: Also write the map's polygons here (e.g. a GeoPackage).

    Returns:
        What was written.
    """
    task = load_task(checkpoint)
    size = int(task.hparams['model_kwargs']['img_size'])
    return predict_raster(
        task,
        raster,
        output,
        overlap=size - stride,
        output='classes',
        vector_path=vectors,
    )
