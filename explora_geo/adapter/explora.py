"""The ExPLoRA adapter: which tensors of a ViT train, and how they merge back.

An adapter is a small :class:`ExPLoRAConfig` plus functions that inject it into a
timm-style ViT (:func:`apply_explora`), fold it into the weights
(:func:`merge_lora`, :func:`unmerge_lora`, :func:`merge_and_unload`), and save or
restore the update Δ_T (:func:`save_delta`, :func:`load_delta`,
:func:`apply_delta`). Nothing else in a model needs to know it exists.

.. versionadded:: 0.1
"""

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import safetensors.torch
from torch import Tensor, nn

from ..atomic import write_atomic
from ..models.checkpoints import load_into
from .linear_lora import LINEAR_TARGETS, LinearLoRA
from .lora import QKV_INDEX, QKVLoRA

#: Every LoRA layer type an adapter injects.
LoRALayer = QKVLoRA | LinearLoRA

#: Names accepted in :attr:`ExPLoRAConfig.targets`.
LORA_TARGETS = (*QKV_INDEX, *LINEAR_TARGETS)

#: Normalisation layers made trainable by ``train_norms``.
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

DELTA_FORMAT = 'explora_geo.delta/1'


@dataclass(frozen=True)
class ExPLoRAConfig:
    """What an ExPLoRA (or plain LoRA) adapter trains.

    Block indices are 0-based; negative indices count from the end, so the
    paper's ``[L]`` is ``(-1,)`` and ``[1, L]`` is ``(0, -1)``.

    Args:
        unfrozen_blocks: Blocks trained in full (they get no LoRA).
        rank: LoRA rank r of every other block; 0 disables LoRA.
        alpha: LoRA alpha; updates are scaled by ``alpha / rank``.
        targets: Matrices of every LoRA block that get LoRA: ``'q'``, ``'k'``,
            ``'v'`` (slices of the fused ``attn.qkv``), ``'proj'``
            (``attn.proj``), ``'fc1'``, ``'fc2'`` (``mlp.fc1``, ``mlp.fc2``).
            ExPLoRA uses ``('q', 'v')``; all six is the paper's "LoRA on all
            matrices" ablation.
        dropout: Dropout on the LoRA input.
        train_norms: Train every normalisation layer.
        train_cls_token: Train the class token.
        train_patch_embed: Train the patch embedding.
        train_pos_embed: Train the position embedding (and other learned
            token encodings such as channel-group embeddings).
        trainable: Extra parameter-name patterns (``fnmatch``) to train, e.g.
            ``('head.*',)``.
        blocks: Name of the attribute that holds the transformer blocks.

    .. versionadded:: 0.1
    """

    unfrozen_blocks: tuple[int, ...] = (-1,)
    rank: int = 64
    alpha: float = 1.0
    targets: tuple[str, ...] = ('q', 'v')
    dropout: float = 0.0
    train_norms: bool = True
    train_cls_token: bool = True
    train_patch_embed: bool = False
    train_pos_embed: bool = False
    trainable: tuple[str, ...] = field(default_factory=tuple)
    blocks: str = 'blocks'

    def __post_init__(self) -> None:
        """Validate and normalise the fields.

        Raises:
            ValueError: If a value is out of range.
        """
        if self.rank < 0:
            raise ValueError(f'rank must be >= 0, got {self.rank}')
        if self.alpha <= 0:
            raise ValueError(f'alpha must be > 0, got {self.alpha}')
        if not 0 <= self.dropout < 1:
            raise ValueError(f'dropout must be in [0, 1), got {self.dropout}')
        # Accept lists from YAML/JSON.
        for name in ('unfrozen_blocks', 'targets', 'trainable'):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f'targets must be distinct names among {LORA_TARGETS}, got '
                f'{self.targets}'
            )
        if self.rank > 0 and not self.targets:
            raise ValueError('targets must name at least one matrix when rank > 0')

    @classmethod
    def lora_finetune(cls, rank: int = 8, alpha: float = 8.0) -> Self:
        """Plain LoRA on Q and V of every block, as used for fine-tuning.

        Args:
            rank: LoRA rank.
            alpha: LoRA alpha.

        Returns:
            A config that trains only the LoRA factors (add the head via
            ``trainable``).
        """
        return cls(
            unfrozen_blocks=(),
            rank=rank,
            alpha=alpha,
            train_norms=False,
            train_cls_token=False,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-serialisable data."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild a config from :meth:`to_dict` output.

        Args:
            data: The mapping.

        Returns:
            The config.

        Raises:
            ValueError: If *data* has unknown fields.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown ExPLoRAConfig fields: {unknown}')
        return cls(**data)


def get_blocks(model: nn.Module, attr: str = 'blocks') -> Sequence[nn.Module]:
    """The transformer blocks of a ViT.

    Args:
        model: A timm-style ViT.
        attr: Attribute holding the blocks.

    Returns:
        The blocks, in order.

    Raises:
        AttributeError: If *model* has no such attribute.
    """
    blocks = getattr(model, attr, None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise AttributeError(
            f'{type(model).__name__} has no transformer blocks at .{attr} '
            '(expected an nn.Sequential or nn.ModuleList)'
        )
    return list(blocks)


def resolve_blocks(indices: Iterable[int], depth: int) -> tuple[int, ...]:
    """Turn possibly negative block indices into sorted non-negative ones.

    Args:
        indices: 0-based indices, negatives counting from the end.
        depth: Number of blocks.

    Returns:
        Sorted unique indices in ``[0, depth)``.

    Raises:
        IndexError: If an index is out of range.
    """
    out = set()
    for i in indices:
        if not -depth <= i < depth:
            raise IndexError(f'block index {i} out of range for a ViT of depth {depth}')
        out.add(i % depth)
    return tuple(sorted(out))


def inject_qkv_lora(
    blocks: Iterable[nn.Module],
    rank: int,
    alpha: float = 1.0,
    targets: Sequence[str] = ('q', 'v'),
    dropout: float = 0.0,
) -> list[QKVLoRA]:
    """Replace ``attn.qkv`` of each block by a :class:`QKVLoRA` around it.

    Args:
        blocks: Transformer blocks with an ``attn.qkv`` linear layer.
        rank: LoRA rank.
        alpha: LoRA alpha.
        targets: Projections to adapt.
        dropout: LoRA dropout.

    Returns:
        The new adapter layers, their factors trainable.

    Raises:
        TypeError: If a block has no fused ``attn.qkv`` linear layer.
    """
    layers = []
    for block in blocks:
        attn = getattr(block, 'attn', None)
        qkv = getattr(attn, 'qkv', None)
        if isinstance(qkv, QKVLoRA):
            raise TypeError('block already has a LoRA adapter on attn.qkv')
        if not isinstance(qkv, nn.Linear) or attn is None:
            raise TypeError(
                f'{type(block).__name__} has no fused attn.qkv nn.Linear to adapt'
            )
        layer = QKVLoRA(qkv, rank=rank, alpha=alpha, targets=targets, dropout=dropout)
        attn.qkv = layer
        layers.append(layer)
    return layers


def inject_linear_lora(
    blocks: Iterable[nn.Module],
    rank: int,
    alpha: float = 1.0,
    targets: Sequence[str] = ('proj', 'fc1', 'fc2'),
    dropout: float = 0.0,
) -> list[LinearLoRA]:
    """Wrap whole linear layers of each block (``attn.proj``, ``mlp.fc1/fc2``) in LoRA.

    Args:
        blocks: Transformer blocks of a timm-style ViT.
        rank: LoRA rank.
        alpha: LoRA alpha.
        targets: Keys of :data:`~explora_geo.adapter.linear_lora.LINEAR_TARGETS`.
        dropout: LoRA dropout.

    Returns:
        The new adapter layers, their factors trainable.

    Raises:
        TypeError: If a block has no such ``nn.Linear``, or it is adapted already.
    """
    layers = []
    for block in blocks:
        for target in targets:
            path = LINEAR_TARGETS[target]
            parent_name, _, child = path.rpartition('.')
            parent = block.get_submodule(parent_name) if parent_name else block
            base = getattr(parent, child, None)
            if isinstance(base, LinearLoRA):
                raise TypeError(f'block already has a LoRA adapter on {path}')
            if not isinstance(base, nn.Linear):
                raise TypeError(
                    f'{type(block).__name__} has no {path} nn.Linear to adapt '
                    f'(LoRA target {target!r})'
                )
            layer = LinearLoRA(base, rank=rank, alpha=alpha, dropout=dropout)
            setattr(parent, child, layer)
            layers.append(layer)
    return layers


def apply_explora(model: nn.Module, config: ExPLoRAConfig) -> nn.Module:
    """Inject the adapter into *model* in place and set ``requires_grad``.

    Everything is frozen, then unfrozen: the LoRA factors, every parameter of
    the unfrozen blocks, the norms, class token, patch/position embeddings and
    name patterns the config asks for.

    Args:
        model: A timm-style ViT (or any module with blocks of ``attn.qkv``).
        config: The adapter.

    Returns:
        *model*, adapted; ``model.explora_config`` holds *config*.

    Raises:
        ValueError: If *model* already carries an adapter.
    """
    if getattr(model, 'explora_config', None) is not None:
        raise ValueError(
            'model already has an ExPLoRA adapter; merge or rebuild it first'
        )
    blocks = get_blocks(model, config.blocks)
    unfrozen = resolve_blocks(config.unfrozen_blocks, len(blocks))
    model.requires_grad_(False)
    if config.rank > 0:
        lora_blocks = [b for i, b in enumerate(blocks) if i not in unfrozen]
        qkv = [t for t in config.targets if t in QKV_INDEX]
        linear = [t for t in config.targets if t in LINEAR_TARGETS]
        if qkv:
            inject_qkv_lora(lora_blocks, config.rank, config.alpha, qkv, config.dropout)
        if linear:
            inject_linear_lora(
                lora_blocks, config.rank, config.alpha, linear, config.dropout
            )
    for i in unfrozen:
        blocks[i].requires_grad_(True)
    if config.train_norms:
        for module in model.modules():
            if isinstance(module, NORM_LAYERS):
                module.requires_grad_(True)
    patterns = list(config.trainable)
    if config.train_cls_token:
        patterns.append('cls_token')
    if config.train_patch_embed:
        patterns.append('patch_embed.*')
    if config.train_pos_embed:
        patterns += ['pos_embed', '*_embed', 'pos_embed.*', 'channel_embed*']
    for name, param in model.named_parameters():
        if name.endswith(('lora_A', 'lora_B')) or any(
            fnmatch.fnmatchcase(name, p) for p in patterns
        ):
            param.requires_grad_(True)
    # A plain attribute (not a submodule/parameter): it is not in the state dict.
    object.__setattr__(model, 'explora_config', config)
    return model


def lora_layers(model: nn.Module) -> list[LoRALayer]:
    """All LoRA layers of *model* (on ``qkv`` slices and on whole linears)."""
    return [m for m in model.modules() if isinstance(m, QKVLoRA | LinearLoRA)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its weight, keeping the adapters (reversible).

    Args:
        model: An adapted model.

    Returns:
        *model*.
    """
    for layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`.

    Args:
        model: An adapted, merged model.

    Returns:
        *model*.
    """
    for layer in lora_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the adapters and remove them: *model* becomes a plain ViT again.

    ``requires_grad`` flags are left as they are.

    Args:
        model: An adapted model.

    Returns:
        *model*, whose state dict has the keys of the unadapted model.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, QKVLoRA | LinearLoRA):
                setattr(module, name, child.to_linear())
    if hasattr(model, 'explora_config'):
        del model.explora_config
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of trainable values in *model*."""
    return sum(p.numel() for p in trainable_parameters(model).values())


def save_delta(
    model: nn.Module,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write Δ_T: only the trainable tensors of an adapted model, as safetensors.

    The file also records the adapter config and *metadata* (e.g. the source
    model name and weights) so :func:`apply_delta` can rebuild the adapted
    model on the source weights. The file is written atomically.

    Args:
        model: An adapted, unmerged model.
        path: Output file (``.safetensors``).
        metadata: Extra JSON-serialisable information to store.

    Returns:
        The path written.

    Raises:
        ValueError: If *model* has no adapter or its LoRA is merged.
    """
    config = getattr(model, 'explora_config', None)
    if config is None:
        raise ValueError('model has no ExPLoRA adapter (apply_explora first)')
    if any(layer.merged for layer in lora_layers(model)):
        raise ValueError(
            'save_delta needs unmerged LoRA layers; call unmerge_lora first'
        )
    tensors = {
        n: p.detach().contiguous().cpu() for n, p in trainable_parameters(model).items()
    }
    header = {
        'format': DELTA_FORMAT,
        'explora_config': json.dumps(config.to_dict()),
        'metadata': json.dumps(metadata or {}),
    }
    return write_atomic(
        path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header)
    )


def load_delta(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Tensor], ExPLoRAConfig, dict[str, Any]]:
    """Read a Δ_T file written by :func:`save_delta`.

    Args:
        path: The ``.safetensors`` file.

    Returns:
        The tensors, the adapter config and the stored metadata.

    Raises:
        ValueError: If the file is not an explora_geo delta.
    """
    with safetensors.safe_open(str(path), framework='pt') as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if header.get('format') != DELTA_FORMAT:
        raise ValueError(
            f'{path}: not an explora_geo delta file (format {header.get("format")!r}, '
            f'expected {DELTA_FORMAT!r})'
        )
    config = ExPLoRAConfig.from_dict(json.loads(header['explora_config']))
    return tensors, config, json.loads(header.get('metadata', '{}'))


def apply_delta(
    model: nn.Module, path: str | os.PathLike[str], merge: bool = True
) -> nn.Module:
    """Rebuild an adapted model from source weights plus a Δ_T file.

    Args:
        model: The source model (unadapted, with W_S loaded).
        path: A file written by :func:`save_delta`.
        merge: Merge and unload the adapter afterwards (a plain ViT holding
            W_S + Δ_T); otherwise keep it, e.g. to continue training.

    Returns:
        *model*.

    Raises:
        KeyError: If the file and the adapted model disagree on tensor names.
        ValueError: If a tensor's shape differs.
    """
    tensors, config, _ = load_delta(path)
    apply_explora(model, config)
    load_into(
        model,
        tensors,
        source=str(path),
        allow_missing=(),
        expected=trainable_parameters(model),
        optional=lambda key: False,
        target_name="the adapted model's trainable tensors",
    )
    if merge:
        merge_and_unload(model)
    return model
