"""The source model W_S: a small MAE pre-trained on natural-colour aerial photographs.

No pre-trained weights can be downloaded in every environment, so the demo
makes its own natural-image MAE, the stand-in for the ImageNet MAE that
ExPLoRA starts from in the paper.

.. versionadded:: 0.1
"""

import json
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from ..atomic import write_atomic
from ..models.mae import create_mae
from ..tasks.pretraining import warmup_cosine
from .config import DemoConfig
from .data import RGB_NORMALIZATION, rgb_source_images

#: timm name of the source MAE (its blocks initialise the group-channel MAE).
SOURCE_MODEL = 'explora_vitb_mae'


def pretrain_source(config: DemoConfig, path: Path, seed: int) -> Path:
    """Pre-train the small RGB source MAE on the bundled aerial photographs.

    The checkpoint is reused when it was written for the same sizes, schedule
    and seed.

    Args:
        config: Demo sizes.
        path: Where to write the checkpoint (MAE's ``{"model": ...}`` layout).
        seed: Random seed.

    Returns:
        *path*.
    """
    recipe = json.dumps(
        {
            'sizes': config.source_kwargs(),
            'img_size': config.chip,
            'steps': config.source_steps,
            'lr': config.source_lr,
            'batch_size': config.batch_size,
            'seed': seed,
        },
        sort_keys=True,
    )
    if path.is_file():
        cached = torch.load(path, map_location='cpu', weights_only=True)
        if cached.get('demo_recipe') == recipe:
            print(f'1/5 source MAE: reusing {path}')
            return path
    torch.manual_seed(seed)
    mae = create_mae(
        SOURCE_MODEL, norm_pix_loss=True, img_size=config.chip, **config.source_kwargs()
    )
    images = rgb_source_images(config.chip)
    optimizer = torch.optim.AdamW(
        mae.parameters(), lr=config.source_lr, betas=(0.9, 0.95), weight_decay=0.05
    )
    steps = config.source_steps
    warmup = max(1, steps // 10)
    schedule = LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, steps, 0.0))
    generator = torch.Generator().manual_seed(seed)
    mae.train()
    bar = tqdm(range(steps), desc='1/5 source MAE on RGB aerial photos', unit='step')
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
        loss = mae(RGB_NORMALIZATION(torch.stack(batch)), mask_ratio=0.75).loss
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
    checkpoint = {'model': state, 'demo_recipe': recipe}
    return write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))
