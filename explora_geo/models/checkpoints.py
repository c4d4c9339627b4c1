"""Reading checkpoint files, the key rules every layout shares, and strict loading.

:func:`normalize_vit_keys` brings the encoder keys of these layouts to timm's
ViT names (see the project docs for key names and shapes):

* DinoV2 ``dinov2_vit{s,b,l,g}14_pretrain.pth``: a bare state dict with a
  ``mask_token``; ViT-g's SwiGLU ``mlp.w12`` / ``mlp.w3`` become timm's
  ``mlp.fc1`` / ``mlp.fc2``.
* MAE ``mae_pretrain_vit_*.pth`` / ``mae_visualize_vit_*.pth``: ``{"model": ...}``;
  the decoder (``decoder_*``, ``mask_token``) is split off.
* ExPLoRA releases: encoder-only ``{"model": ...}`` with merged ``qkv``, and full
  ``{"teacher": ...}`` with ``backbone.``-prefixed keys, split
  ``q_proj/k_proj/v_proj`` next to ``qkv`` and stale ``lora_A/lora_B`` (already
  merged into both, so dropped, never re-applied), plus DINO/iBOT heads.
* Lightning checkpoints written by TorchGeo tasks and by explora_geo's exports
  (``{"state_dict": {"model.<key>": ...}}``).

What differs between source layouts (timm ViTs, SatMAE's group-channel and
temporal ViTs) lives in :mod:`explora_geo.models.convert`; every converted
state dict is loaded by :func:`load_into`.

.. versionadded:: 0.1
"""

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from .pos_embed import check_resample_rule, resample_pos_embed

StateDict = dict[str, Tensor]

_WRAPPERS = ('teacher', 'model', 'state_dict', 'module')
_SPLIT_QKV = re.compile(r'(.*\.attn)\.(q_proj|k_proj|v_proj)\.(weight|bias)$')


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a checkpoint file safely (safetensors, or ``torch.load`` with weights only).

    Args:
        path: A ``.safetensors``, ``.pth``, ``.pt`` or ``.ckpt`` file.

    Returns:
        The file's top-level mapping.

    Raises:
        FileNotFoundError: If *path* does not exist.
        ValueError: If the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        if path.suffix == '.safetensors':
            return dict(safetensors.torch.load_file(str(path)))
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise ValueError(f'{path}: cannot read checkpoint ({err})') from err
    if not isinstance(obj, Mapping):
        raise ValueError(
            f'{path}: expected a mapping of tensors, got {type(obj).__name__}'
        )
    return dict(obj)


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> StateDict:
    """Find the encoder state dict inside a checkpoint and strip wrapper prefixes.

    Args:
        checkpoint: A file's top-level mapping.

    Returns:
        Tensors keyed by the encoder's names (``blocks.0.attn.qkv.weight``...).

    Raises:
        ValueError: If no tensors are found.
    """
    obj: Mapping[str, object] = checkpoint
    for key in _WRAPPERS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and not isinstance(inner, Tensor):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f'no tensors found in checkpoint (top-level keys: {sorted(checkpoint)[:10]})'
        )
    # Lightning checkpoints of TorchGeo tasks keep the network under "model.".
    for prefix in ('module.', 'backbone.', 'model.', 'encoder.'):
        if any(k.startswith(prefix) for k in tensors) and any(
            k.startswith(prefix + 'blocks.') for k in tensors
        ):
            tensors = {
                k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)
            }
    return tensors


def split_mae_decoder(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, StateDict]:
    """Separate an MAE checkpoint into encoder and decoder tensors.

    Args:
        state_dict: Unwrapped MAE state dict.

    Returns:
        ``(encoder, decoder)``; the decoder holds ``decoder_*`` and ``mask_token``.
    """
    encoder: StateDict = {}
    decoder: StateDict = {}
    for k, v in state_dict.items():
        (decoder if k.startswith('decoder_') or k == 'mask_token' else encoder)[k] = v
    return encoder, decoder


def normalize_vit_keys(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Bring DinoV2 / MAE / ExPLoRA encoder keys to timm ``VisionTransformer`` names.

    Drops heads, decoders, mask tokens and stale LoRA factors; builds ``qkv``
    from split ``q_proj/k_proj/v_proj`` where no fused tensor exists.

    Args:
        state_dict: Unwrapped state dict.

    Returns:
        The converted state dict.

    Raises:
        ValueError: If fused and split projections disagree.
    """
    out: StateDict = {}
    split: dict[tuple[str, str], dict[str, Tensor]] = {}
    unmerged = sorted(
        k for k in state_dict if k.endswith(('.qkv.lora_A', '.qkv.lora_B'))
    )
    if unmerged:
        # explora_geo's own adapters: their scaling is not in the state dict, so
        # they cannot be merged here, and dropping them would change the model.
        raise ValueError(
            f'checkpoint holds unmerged LoRA factors ({unmerged[0]}, ... {len(unmerged)} '
            'tensors); merge them first (explora-geo export, or '
            'explora_geo.adapter.merge_and_unload) or restore the task with '
            'load_from_checkpoint'
        )
    for k, v in state_dict.items():
        if 'lora_A' in k or 'lora_B' in k:
            # Stale factors of ExPLoRA releases, already merged into the weights.
            continue
        if k.startswith(
            ('decoder_', 'dino_head', 'ibot_head', 'head.', 'fc_norm')
        ) or k in {
            'mask_token',
            'head',
        }:
            if k.startswith('fc_norm'):
                out[k] = v
            continue
        match = _SPLIT_QKV.match(k)
        if match:
            split.setdefault((match[1], match[3]), {})[match[2]] = v
            continue
        k = re.sub(r'(blocks\.\d+\.mlp)\.w12\.', r'\1.fc1.', k)
        k = re.sub(r'(blocks\.\d+\.mlp)\.w3\.', r'\1.fc2.', k)
        out[k] = v
    for (attn, kind), parts in split.items():
        fused = f'{attn}.qkv.{kind}'
        if set(parts) != {'q_proj', 'k_proj', 'v_proj'}:
            raise ValueError(
                f'incomplete split projections at {attn}: found {sorted(parts)}'
            )
        stacked = torch.cat([parts['q_proj'], parts['k_proj'], parts['v_proj']], dim=0)
        if fused not in out:
            out[fused] = stacked
        elif not torch.allclose(
            out[fused].float(), stacked.float(), atol=1e-4, rtol=1e-3
        ):
            raise ValueError(
                f'{fused} disagrees with {attn}.q_proj/k_proj/v_proj.{kind}; '
                'the checkpoint is inconsistent'
            )
    return out


def fit_pos_embed(pos_embed: Tensor, model: nn.Module) -> Tensor:
    """Resample a checkpoint's position table to *model*'s patch grid.

    The rule is the model's ``pos_embed_resample`` attribute (``'dinov2'``,
    ``'mae'`` or ``'timm'``, see :mod:`explora_geo.models.pos_embed`); models
    without one are resampled as timm does. A table that already has the
    model's length is returned as it is.

    Args:
        pos_embed: ``(1, prefix + H*W, D)`` table of a square grid.
        model: A ViT with ``pos_embed``, ``patch_embed.grid_size`` and
            ``num_prefix_tokens``.

    Returns:
        The table for the model's grid.
    """
    own = getattr(model, 'pos_embed', None)
    if own is None or own.shape[1] == pos_embed.shape[1]:
        return pos_embed
    no_embed_class = bool(getattr(model, 'no_embed_class', False))
    prefix = 0 if no_embed_class else int(getattr(model, 'num_prefix_tokens', 1))
    patch_embed: Any = model.patch_embed
    grid = tuple(patch_embed.grid_size)
    rule = check_resample_rule(getattr(model, 'pos_embed_resample', 'timm'))
    return resample_pos_embed(pos_embed, grid, num_prefix_tokens=prefix, rule=rule)


def normalize_decoder_keys(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Drop stale LoRA factors and fuse split projections of MAE decoder blocks.

    Args:
        state_dict: ``decoder_*`` and ``mask_token`` tensors.

    Returns:
        The tensors with fused ``decoder_blocks.<i>.attn.qkv`` only.
    """
    # normalize_vit_keys works on encoder names; decoder blocks are renamed to
    # its ``blocks.`` and back so the same rules apply.
    blocks = {
        k.replace('decoder_blocks.', 'blocks.', 1): v
        for k, v in state_dict.items()
        if k.startswith('decoder_blocks.')
    }
    out = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith('decoder_blocks.') and 'lora_' not in k
    }
    for k, v in normalize_vit_keys(blocks).items():
        out[k.replace('blocks.', 'decoder_blocks.', 1)] = v
    return out


def drop_mismatched_head(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Remove a classifier head whose shape differs from *model*'s (a new head).

    Args:
        state_dict: Converted tensors (changed in place).
        model: The model to load into.

    Returns:
        *state_dict*.
    """
    target = model.state_dict()
    for name in ('head.weight', 'head.bias'):
        if name in state_dict and (
            name not in target or target[name].shape != state_dict[name].shape
        ):
            del state_dict[name]
    return state_dict


def _adapter_factor(key: str) -> bool:
    # An adapted model's LoRA factors are not part of any source checkpoint.
    return key.endswith(('.lora_A', '.lora_B'))


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = 'checkpoint',
    allow_missing: tuple[str, ...] = ('head.', 'fc_norm.'),
    *,
    expected: Mapping[str, Tensor] | None = None,
    optional: Callable[[str], bool] = _adapter_factor,
    strip_prefix: str = '',
    hint: Callable[[list[str]], str] | None = None,
    target_name: str | None = None,
) -> None:
    """Load *state_dict* into *model*, failing loudly on any key mismatch.

    This is the package's one strict loader: source checkpoints, MAE
    encoder + decoder checkpoints and Δ_T files all load through it.

    Args:
        model: Target model.
        state_dict: Converted tensors.
        source: Where the tensors came from, for error messages.
        allow_missing: Prefixes of expected keys that may be absent (new heads).
        expected: The tensors that must be provided (default: the whole
            ``model.state_dict()``); their names are ``model``'s.
        optional: Other expected keys that may be absent (default: LoRA factors).
        strip_prefix: Removed from key names in messages (e.g. ``'encoder.'``,
            to name keys as the checkpoint does).
        hint: Called with the missing keys; its text ends the error message.
        target_name: What *expected* belongs to, for messages (default: the
            model's class name).

    Raises:
        KeyError: If keys are missing or unexpected; lists both.
        ValueError: If a tensor's shape differs from the model's.
    """
    target = model.state_dict() if expected is None else expected

    def name(key: str) -> str:
        return key.removeprefix(strip_prefix)

    missing = sorted(
        name(k)
        for k in target
        if k not in state_dict and not k.startswith(allow_missing) and not optional(k)
    )
    unexpected = sorted(name(k) for k in state_dict if k not in target)
    if missing or unexpected:
        raise KeyError(
            f'{source} does not match {target_name or type(model).__name__}: '
            f'missing keys: {missing}; '
            f'unexpected keys: {unexpected}{hint(missing) if hint else ""}'
        )
    for k, v in state_dict.items():
        if target[k].shape != v.shape:
            raise ValueError(
                f'{source}: {name(k)} has shape {tuple(v.shape)}, the model expects '
                f'{tuple(target[k].shape)}'
            )
    model.load_state_dict(state_dict, strict=False)
