"""``explora-geo demo``: the whole ExPLoRA pipeline on a real Sentinel-2 scene.

1. **Source model W_S.** A small MAE ViT is pre-trained on natural-colour RGB
   aerial photographs (bundled NEON orthophotos): the stand-in for the
   natural-image MAE of the paper, since no weights can be downloaded here.
   With ``--weights`` the released MAE weights are used instead, at full size.
2. **ExPLoRA.** The source blocks initialise a SatMAE group-channel MAE for the
   13-band scene (B1, B9, B10 dropped; groups RGB+NIR, red edge, SWIR); blocks
   1 and L are unfrozen, the others get LoRA on Q and V, the per-group patch
   embeddings are trained from scratch, the decoder gets LoRA and trainable
   norms (M-[1,L]-r8, the paper's multispectral recipe at small size). MAE
   pre-training continues on unlabelled chips of the scene's training region.
3. **Merge and export.** The merged encoder (``weights=<path>`` for TorchGeo
   tasks) and the compact Δ_T file.
4. **Compare** source vs ExPLoRA representations on held-out chips (the
   quarter of the scene in blocks never seen in pre-training): masked-reconstruction
   error, a linear probe and LoRA fine-tuning on land-cover labels derived from
   standard spectral indices (see :func:`land_cover_labels` and docs/demo.md).

Everything lands in one output folder with a results table (``results.md``,
``results.json``) and a figure (``comparison.png``).

.. versionadded:: 0.1
"""

import json
import math
import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .datasets.fmow_sentinel import FMoWSentinel
from .models.mae import MaskedAutoencoder, create_mae
from .models.weights import create_model, get_weight
from .peft import ExPLoRAConfig
from .tasks.callbacks import ExPLoRAExport
from .tasks.classification import ClassificationTask
from .tasks.explora_mae import ExPLoRAMAE
from .tasks.pretraining import OptimizationConfig

#: Land-cover classes of the demo's chip labels.
CLASSES = ('water', 'dense vegetation', 'marsh / sparse vegetation', 'bare / built')
SCENE_BANDS = FMoWSentinel.all_bands
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass
class DemoConfig:
    """Sizes and schedule of the demo (defaults: about 5 minutes on 2 CPU cores)."""

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
    finetune_epochs: int = 6
    # Matrices this small run faster in fp32 than through bf16 autocast on CPU.
    precision: str = '32-true'

    @classmethod
    def fast(cls) -> 'DemoConfig':
        """A short schedule for smoke tests."""
        return cls(
            source_steps=20, explora_steps=12, finetune_epochs=1, depth=2, batch_size=32
        )


def scene_path() -> Path:
    """The bundled 13-band Sentinel-2 L1C scene."""
    return Path(str(files('explora_geo') / 'assets' / 's2_virginia_13band.tif'))


def read_scene(path: Path) -> np.ndarray:
    """Read the scene as ``(13, H, W)`` float32 digital numbers, checking its bands.

    Args:
        path: A 13-band GeoTIFF in fMoW-Sentinel band order.

    Returns:
        The bands.

    Raises:
        ValueError: If the file does not hold the 13 Sentinel-2 bands.
    """
    with rasterio.open(path) as src:
        if src.count != len(SCENE_BANDS):
            raise ValueError(f'{path}: expected 13 Sentinel-2 bands, found {src.count}')
        return src.read().astype(np.float32)


def land_cover_labels(scene: np.ndarray) -> np.ndarray:
    """Per-pixel land-cover class from two standard spectral indices.

    NDWI = (B3 - B8) / (B3 + B8) (McFeeters, 1996) and NDVI = (B8 - B4) / (B8 + B4)
    (Rouse et al., 1974) on top-of-atmosphere digital numbers: water where
    NDWI > 0.2; dense vegetation where NDVI > 0.45; marsh / sparse vegetation
    where 0.15 < NDVI <= 0.45; bare or built-up otherwise.

    Args:
        scene: ``(13, H, W)`` bands in fMoW-Sentinel order.

    Returns:
        ``(H, W)`` int64 class indices into :data:`CLASSES`.
    """
    b3, b4, b8 = scene[2], scene[3], scene[7]
    ndwi = (b3 - b8) / np.maximum(b3 + b8, 1e-6)
    ndvi = (b8 - b4) / np.maximum(b8 + b4, 1e-6)
    labels = np.full(ndvi.shape, 3, dtype=np.int64)
    labels[ndvi > 0.15] = 2
    labels[ndvi > 0.45] = 1
    labels[ndwi > 0.2] = 0
    return labels


def satmae_normalize(scene: np.ndarray) -> np.ndarray:
    """SatMAE's normalisation with the fMoW-Sentinel band statistics."""
    mean = np.asarray([FMoWSentinel.mean[b] for b in SCENE_BANDS], dtype=np.float32)[
        :, None, None
    ]
    std = np.asarray([FMoWSentinel.std[b] for b in SCENE_BANDS], dtype=np.float32)[
        :, None, None
    ]
    lo = mean - 2 * std
    return np.clip((scene - lo) / (4 * std), 0, 1).astype(np.float32)


def rgb_from_scene(scene: np.ndarray) -> np.ndarray:
    """Natural-colour (B4, B3, B2) image in [0, 1] with a 2-98 % stretch."""
    rgb = scene[[3, 2, 1]]
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - lo) / (hi - lo), 0, 1).astype(np.float32)


class ChipGrid:
    """Chips of the scene with a spatial train / held-out split.

    The scene is divided into blocks of ``block`` pixels; a diagonal pattern of
    a quarter of the blocks is held out, so that the held-out chips cover every
    kind of land cover while no pre-training or training chip overlaps them.
    """

    def __init__(self, scene: np.ndarray, chip: int, block: int = 128) -> None:
        """Cut the scene into chips.

        Args:
            scene: ``(13, H, W)`` digital numbers.
            chip: Chip size in pixels (divides *block*).
            block: Size of the split's blocks in pixels.
        """
        _, height, width = scene.shape
        self.chip = chip
        self.normalized = torch.from_numpy(satmae_normalize(scene))
        self.rgb = torch.from_numpy(rgb_from_scene(scene))
        rows = torch.arange(height) // block
        cols = torch.arange(width) // block
        #: Pixels of the held-out blocks.
        self.test_mask = (rows[:, None] + cols[None, :]) % 4 == 0
        pixel_labels = land_cover_labels(scene)
        # Half-overlapping chips; a chip is held out when it lies in held-out
        # blocks, used for training when it avoids them, and dropped otherwise.
        stride = chip // 2
        held = self.test_mask
        cells = [
            (y, x)
            for y in range(0, height - chip + 1, stride)
            for x in range(0, width - chip + 1, stride)
        ]
        self.cells = [
            (y, x)
            for y, x in cells
            if held[y : y + chip, x : x + chip].all()
            or not held[y : y + chip, x : x + chip].any()
        ]
        self.labels = torch.tensor(
            [
                np.bincount(
                    pixel_labels[y : y + chip, x : x + chip].ravel(), minlength=4
                ).argmax()
                for y, x in self.cells
            ]
        )
        self.is_test = torch.tensor([bool(self.test_mask[y, x]) for y, x in self.cells])

    def stack(self, image: Tensor, split: str) -> Tensor:
        """Chips of *image* (``(C, H, W)``) for ``'train'`` or ``'test'``."""
        keep = self.is_test if split == 'test' else ~self.is_test
        c = self.chip
        return torch.stack(
            [
                image[:, y : y + c, x : x + c]
                for (y, x), k in zip(self.cells, keep, strict=True)
                if k
            ]
        )

    def split_labels(self, split: str) -> Tensor:
        """Labels of the chips of *split*."""
        keep = self.is_test if split == 'test' else ~self.is_test
        return self.labels[keep]

    def train_positions(self) -> Tensor:
        """Top-left corners ``(N, 2)`` of every chip that avoids the held-out blocks."""
        held = F.pad(self.test_mask.float().cumsum(0).cumsum(1), (1, 0, 1, 0))
        c = self.chip
        inside = held[c:, c:] - held[:-c, c:] - held[c:, :-c] + held[:-c, :-c]
        return torch.nonzero(inside == 0)


class RandomChips(Dataset[dict[str, Tensor]]):
    """Random chips from the training blocks (unlabelled, for pre-training)."""

    def __init__(
        self, image: Tensor, chip: int, positions: Tensor, length: int, seed: int
    ) -> None:
        """Initialise the sampler.

        Args:
            image: ``(C, H, W)`` normalised scene.
            chip: Chip size.
            positions: Allowed top-left corners ``(N, 2)``.
            length: Chips per epoch.
            seed: Seed of the chip positions.
        """
        self.image, self.chip, self.length = image, chip, length
        generator = torch.Generator().manual_seed(seed)
        self.corners = positions[
            torch.randint(len(positions), (length,), generator=generator)
        ]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        y, x = (int(v) for v in self.corners[index])
        c = self.chip
        return {'image': self.image[:, y : y + c, x : x + c]}


def rgb_source_images(size: int) -> list[Tensor]:
    """The bundled NEON RGB photographs, halved to 0.2 m, as ``(3, H, W)`` in [0, 1]."""
    folder = files('explora_geo') / 'assets' / 'neon_rgb'
    images = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith('.jpg'):
            continue
        with entry.open('rb') as handle:
            image = Image.open(handle).convert('RGB')
            image = image.resize(
                (image.width // 2, image.height // 2), Image.Resampling.BILINEAR
            )
            array = np.asarray(image, dtype=np.float32) / 255
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        if min(tensor.shape[1:]) >= size:
            images.append(tensor)
    return images


def imagenet_normalize(rgb: Tensor) -> Tensor:
    """Normalise ``(B, 3, H, W)`` images in [0, 1] with the ImageNet statistics."""
    return (rgb - IMAGENET_MEAN) / IMAGENET_STD


def source_model_kwargs(config: DemoConfig) -> dict[str, Any]:
    """Sizes of the small source MAE."""
    return {
        'img_size': config.chip,
        'patch_size': config.patch,
        'embed_dim': config.embed_dim,
        'depth': config.depth,
        'num_heads': config.heads,
        'decoder_embed_dim': config.decoder_dim,
        'decoder_depth': config.decoder_depth,
        'decoder_num_heads': config.decoder_heads,
    }


def pretrain_source(config: DemoConfig, path: Path, seed: int) -> Path:
    """Pre-train the small RGB source MAE on the bundled aerial photographs.

    Args:
        config: Demo sizes.
        path: Where to write the checkpoint (MAE's ``{"model": ...}`` layout).
        seed: Random seed.

    Returns:
        *path*.
    """
    recipe = {
        'sizes': source_model_kwargs(config),
        'steps': config.source_steps,
        'seed': seed,
    }
    if path.is_file():
        cached = torch.load(path, map_location='cpu', weights_only=True)
        if cached.get('demo_recipe') == json.dumps(recipe, sort_keys=True):
            print(f'1/4 source MAE: reusing {path}')
            return path
    torch.manual_seed(seed)
    mae = create_mae(
        'explora_vitb_mae', norm_pix_loss=True, **source_model_kwargs(config)
    )
    images = rgb_source_images(config.chip)
    optimizer = torch.optim.AdamW(
        mae.parameters(), lr=config.source_lr, betas=(0.9, 0.95), weight_decay=0.05
    )
    steps = config.source_steps
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, s / steps)))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    mae.train()
    bar = tqdm(range(steps), desc='1/4 source MAE on RGB aerial photos', unit='step')
    for _ in bar:
        batch = []
        for _ in range(config.batch_size):
            image = images[int(torch.randint(len(images), (1,), generator=generator))]
            _, h, w = image.shape
            y = int(torch.randint(h - config.chip + 1, (1,), generator=generator))
            x = int(torch.randint(w - config.chip + 1, (1,), generator=generator))
            crop = image[:, y : y + config.chip, x : x + config.chip]
            if torch.rand((), generator=generator) < 0.5:
                crop = crop.flip(-1)
            batch.append(crop)
        loss = mae(imagenet_normalize(torch.stack(batch)), mask_ratio=0.75).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f'{loss.item():.3f}')
    # The official MAE layout: encoder keys at the top level, decoder_* beside them.
    state = {
        (k[len('encoder.') :] if k.startswith('encoder.') else k): v.detach().clone()
        for k, v in mae.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    torch.save({'model': state, 'demo_recipe': json.dumps(recipe, sort_keys=True)}, tmp)
    tmp.replace(path)
    return path


@torch.no_grad()
def reconstruction_error(mae: MaskedAutoencoder, chips: Tensor, seed: int) -> float:
    """Mean masked-patch MSE over *chips* with seeded masks (same for every model)."""
    mae.eval()
    torch.manual_seed(seed)
    losses = [float(mae(batch, mask_ratio=0.75).loss) for batch in chips.split(64)]
    return float(np.mean(losses))


@torch.no_grad()
def features(encoder: nn.Module, chips: Tensor) -> Tensor:
    """Class token concatenated with the mean patch token (frozen encoder)."""
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
    """Accuracy of a multinomial logistic regression on frozen features."""
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
    return float((probe(test_x).argmax(1) == test_y).float().mean())


def finetune_accuracy(
    weights: str | None,
    model: str,
    model_kwargs: dict[str, Any],
    config: DemoConfig,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    out: Path,
    name: str,
    seed: int,
) -> float:
    """LoRA-r8 fine-tuning of a group-channel ViT on the chip labels; test accuracy."""
    lightning.seed_everything(seed, verbose=False)
    train_x, train_y, test_x, test_y = data
    task = ClassificationTask(
        model=model,
        weights=weights,
        in_channels=len(SCENE_BANDS),
        num_classes=len(CLASSES),
        finetune='lora',
        lora_rank=8,
        lr=3e-3,
        model_kwargs={**model_kwargs, 'img_size': config.chip},
    )
    # Every 6th training chip validates (TorchGeo's schedulers monitor val_loss);
    # the held-out chips are only used for the final accuracy.
    is_val = torch.arange(len(train_y)) % 6 == 5
    train = DataLoader(
        _LabelledChips(train_x[~is_val], train_y[~is_val]),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(_LabelledChips(train_x[is_val], train_y[is_val]), batch_size=128)
    trainer = lightning.Trainer(
        max_epochs=config.finetune_epochs,
        accelerator='cpu',
        precision=config.precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=out / name,
    )
    trainer.fit(task, train_dataloaders=train, val_dataloaders=val)
    task.eval()
    with torch.no_grad():
        predictions = torch.cat([task(b).argmax(1) for b in test_x.split(128)])
    return float((predictions == test_y).float().mean())


class _LabelledChips(TensorDataset):
    def __getitem__(self, index: int) -> dict[str, Tensor]:  # type: ignore[override]
        image, label = super().__getitem__(index)
        return {'image': image, 'label': label}


def group_encoder_kwargs(config: DemoConfig) -> dict[str, Any]:
    """Sizes of the group-channel encoder (matching the source blocks)."""
    return {
        'img_size': config.chip,
        'patch_size': config.patch,
        'embed_dim': config.embed_dim,
        'depth': config.depth,
        'num_heads': config.heads,
        'channel_embed_dim': config.channel_embed_dim,
    }


def run_demo(
    output: Path = Path('outputs/demo'),
    weights: str | None = None,
    fast: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo and write its outputs.

    Args:
        output: Output folder.
        weights: Source MAE weights (enum name or path); default: pre-train the
            small source MAE on the bundled RGB photographs.
        fast: A short schedule for smoke tests.
        seed: Random seed.

    Returns:
        The results (also written to ``results.json``).
    """
    start = time.perf_counter()
    torch.set_float32_matmul_precision('medium')
    config = DemoConfig.fast() if fast else DemoConfig()
    output.mkdir(parents=True, exist_ok=True)
    scene = read_scene(scene_path())
    grid = ChipGrid(scene, config.chip)

    # 1. Source model.
    if weights is None:
        source = pretrain_source(config, output / 'source_mae.pth', seed)
        source_weights: str = str(source)
        model_kwargs = group_encoder_kwargs(config)
        decoder_kwargs = {
            'decoder_embed_dim': config.decoder_dim,
            'decoder_depth': config.decoder_depth,
            'decoder_num_heads': config.decoder_heads,
            'decoder_channel_embed_dim': config.decoder_dim // 4,
        }
        group_model, rgb_model, img_size = (
            'explora_vitb_satmae_group',
            'explora_vitb_mae',
            config.chip,
        )
        rgb_kwargs = {
            k: v
            for k, v in source_model_kwargs(config).items()
            if not k.startswith('decoder')
        }
    else:
        source_weights = weights
        model_kwargs, decoder_kwargs = {'img_size': config.chip}, {}
        group_model, rgb_model, img_size = (
            'explora_vitl_satmae_group',
            'explora_vitl_mae',
            config.chip,
        )
        rgb_kwargs = {'img_size': img_size}
        if not Path(weights).exists():
            get_weight(weights)  # fail early on an unknown name

    # 2. ExPLoRA pre-training on unlabelled chips of the training region.
    lightning.seed_everything(seed, verbose=False)
    task = ExPLoRAMAE(
        model=group_model,
        weights=source_weights,
        in_channels=len(SCENE_BANDS),
        img_size=img_size,
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
        decoder_kwargs=decoder_kwargs,
        model_kwargs={k: v for k, v in model_kwargs.items() if k != 'img_size'},
    )
    initial = create_mae(
        group_model,
        weights=source_weights,
        img_size=img_size,
        in_chans=len(SCENE_BANDS),
        **decoder_kwargs,
        **{k: v for k, v in model_kwargs.items() if k != 'img_size'},
    )
    pretrain = DataLoader(
        RandomChips(
            grid.normalized,
            config.chip,
            grid.train_positions(),
            config.explora_steps * config.batch_size,
            seed,
        ),
        batch_size=config.batch_size,
        shuffle=False,
    )
    exports = output / 'explora'
    trainer = lightning.Trainer(
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
        log_every_n_steps=5,
    )
    print(
        f'2/4 ExPLoRA M-[1,L]-r{config.lora_rank} on '
        f'{config.explora_steps * config.batch_size} Sentinel-2 chips'
    )
    trainer.fit(task, train_dataloaders=pretrain)
    encoder_ckpt = exports / 'last_encoder.ckpt'
    delta_file = exports / 'last_delta.safetensors'

    # 3. Compare representations on the held-out eastern chips.
    print('3/4 comparing source and ExPLoRA representations on held-out chips')
    train_ms, test_ms = (
        grid.stack(grid.normalized, 'train'),
        grid.stack(grid.normalized, 'test'),
    )
    train_rgb = imagenet_normalize(grid.stack(grid.rgb, 'train'))
    test_rgb = imagenet_normalize(grid.stack(grid.rgb, 'test'))
    train_y, test_y = grid.split_labels('train'), grid.split_labels('test')
    rgb_encoder = create_model(
        rgb_model, weights=source_weights, num_classes=0, **rgb_kwargs
    )
    merged = create_model(
        group_model,
        weights=str(encoder_ckpt),
        num_classes=0,
        in_chans=len(SCENE_BANDS),
        **model_kwargs,
    )
    results: dict[str, Any] = {
        'config': asdict(config),
        'source_weights': source_weights if weights else 'demo RGB source MAE',
        'chips': {'train': len(train_y), 'test': len(test_y)},
        'test_class_counts': {
            c: int((test_y == i).sum()) for i, c in enumerate(CLASSES)
        },
        'trainable_params': int(
            sum(p.numel() for p in task.parameters() if p.requires_grad)
        ),
        'delta_bytes': delta_file.stat().st_size,
    }
    results['reconstruction_mse'] = {
        'before ExPLoRA (W_S, new patch embeddings)': reconstruction_error(
            initial, test_ms, seed
        ),
        'after ExPLoRA': reconstruction_error(task.model, test_ms, seed),
    }
    majority = float((test_y == train_y.bincount(minlength=4).argmax()).float().mean())
    results['linear_probe_accuracy'] = {
        'majority class': majority,
        'source MAE on RGB (B4,B3,B2)': linear_probe(
            features(rgb_encoder, train_rgb),
            train_y,
            features(rgb_encoder, test_rgb),
            test_y,
            seed,
        ),
        'source blocks on 10 bands (before ExPLoRA)': linear_probe(
            features(initial.encoder, train_ms),
            train_y,
            features(initial.encoder, test_ms),
            test_y,
            seed,
        ),
        'ExPLoRA merged encoder on 10 bands': linear_probe(
            features(merged, train_ms), train_y, features(merged, test_ms), test_y, seed
        ),
    }

    # 4. LoRA fine-tuning from the source blocks vs from the ExPLoRA encoder.
    print('4/4 LoRA-r8 fine-tuning on the land-cover labels')
    initial_ckpt = output / 'initial_encoder.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': group_model},
            'state_dict': {
                f'model.{k}': v for k, v in initial.encoder.state_dict().items()
            },
        },
        initial_ckpt,
    )
    data = (train_ms, train_y, test_ms, test_y)
    ft_kwargs = {k: v for k, v in model_kwargs.items() if k != 'img_size'}
    results['lora_finetune_accuracy'] = {
        'source blocks (before ExPLoRA)': finetune_accuracy(
            str(initial_ckpt),
            group_model,
            ft_kwargs,
            config,
            data,
            output,
            'ft_source',
            seed,
        ),
        'ExPLoRA merged encoder': finetune_accuracy(
            str(encoder_ckpt),
            group_model,
            ft_kwargs,
            config,
            data,
            output,
            'ft_explora',
            seed,
        ),
    }
    results['outputs'] = {
        'merged_encoder': str(encoder_ckpt),
        'delta': str(delta_file),
        'training_checkpoints': str(output / 'logs'),
        'figure': str(output / 'comparison.png'),
        'table': str(output / 'results.md'),
    }
    results['seconds'] = round(time.perf_counter() - start, 1)
    write_report(results, grid, output)
    return results


def write_report(results: dict[str, Any], grid: ChipGrid, output: Path) -> None:
    """Print and save the results table and the comparison figure."""
    lines = [
        '| measure | model | value |',
        '| --- | --- | ---: |',
    ]
    for name, value in results['reconstruction_mse'].items():
        lines.append(
            f'| masked reconstruction MSE (held-out, lower is better) | {name} | {value:.4f} |'
        )
    for name, value in results['linear_probe_accuracy'].items():
        lines.append(
            f'| linear probe accuracy (held-out) | {name} | {100 * value:.1f} % |'
        )
    for name, value in results['lora_finetune_accuracy'].items():
        lines.append(
            f'| LoRA-r8 fine-tuning accuracy (held-out) | {name} | {100 * value:.1f} % |'
        )
    table = '\n'.join(lines)
    summary = (
        f'ExPLoRA demo on the bundled Sentinel-2 scene: {results["chips"]["train"]} training / '
        f'{results["chips"]["test"]} held-out chips, {results["trainable_params"]:,} trainable values '
        f'in pre-training, Δ_T file {results["delta_bytes"] / 1e6:.2f} MB, {results["seconds"]:.0f} s.'
    )
    print('\n' + summary + '\n\n' + table + '\n')
    for kind, path in results['outputs'].items():
        print(f'{kind}: {path}')
    (output / 'results.md').write_text(summary + '\n\n' + table + '\n')
    (output / 'results.json').write_text(json.dumps(results, indent=2))
    plot_comparison(results, grid, output / 'comparison.png')


def plot_comparison(results: dict[str, Any], grid: ChipGrid, path: Path) -> None:
    """Figure: the scene with its split and labels, and the three comparisons."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    rgb = grid.rgb.permute(1, 2, 0).numpy()
    axes[0].imshow(rgb)
    colours = ['#1f77b4', '#2ca02c', '#bcbd22', '#8c564b']
    for (y, x), label in zip(grid.cells, grid.labels.tolist(), strict=True):
        axes[0].add_patch(
            plt.Rectangle(
                (x, y),
                grid.chip,
                grid.chip,
                fill=False,
                lw=0.6,
                edgecolor=colours[label],
            )
        )
    axes[0].imshow(
        grid.test_mask.numpy(), cmap='Reds', alpha=0.25 * grid.test_mask.numpy()
    )
    axes[0].set_title('Sentinel-2 chips by label; red: held-out blocks', fontsize=10)
    axes[0].axis('off')
    handles = [
        plt.Line2D([], [], color=c, lw=3, label=n)
        for c, n in zip(colours, CLASSES, strict=True)
    ]
    axes[0].legend(handles=handles, loc='lower left', fontsize=7)

    def bars(ax: Any, data: dict[str, float], title: str, percent: bool) -> None:
        names = list(data)
        values = [100 * data[n] if percent else data[n] for n in names]
        ax.barh(
            range(len(names)),
            values,
            color=['#999999'] + ['#ff7f0e'] * (len(names) - 1),
        )
        ax.set_yticks(
            range(len(names)), [n.replace(' (', '\n(') for n in names], fontsize=7
        )
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(
                v, i, f' {v:.1f}' if percent else f' {v:.3f}', va='center', fontsize=8
            )

    bars(
        axes[1],
        results['reconstruction_mse'],
        'masked reconstruction MSE (lower better)',
        False,
    )
    bars(axes[2], results['linear_probe_accuracy'], 'linear probe accuracy %', True)
    bars(
        axes[3],
        results['lora_finetune_accuracy'],
        'LoRA-r8 fine-tuning accuracy %',
        True,
    )
    fig.tight_layout()
    tmp = path.with_suffix('.tmp.png')
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
