"""One patch embedding per band group, as in SatMAE's group-channel ViT.

.. versionadded:: 0.1
"""

from collections.abc import Sequence
from typing import Any, cast

import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn

from .satmae_bands import SATMAE_BANDS, SATMAE_GROUPS, SENTINEL2_BANDS

__all__ = ('GroupPatchEmbed',)


def _indices(bands: Sequence[str], within: Sequence[str], what: str) -> list[int]:
    unknown = [b for b in bands if b not in within]
    if unknown:
        raise ValueError(
            f'{what}: band(s) {unknown} are not among the configured bands {list(within)}'
        )
    return [list(within).index(b) for b in bands]


class GroupPatchEmbed(nn.ModuleList):
    """One patch embedding per band group; selects the bands of each group itself.

    The module is a list of timm ``PatchEmbed`` (state-dict keys
    ``patch_embed.<group>.proj.weight`` as in SatMAE). Its input may hold either
    ``input_bands`` (e.g. all 13 Sentinel-2 bands) or only ``bands`` (the kept
    ones); anything else raises a :class:`ValueError` naming both.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 96,
        patch_size: int = 8,
        in_chans: int | None = None,
        embed_dim: int = 1024,
        *,
        groups: Sequence[Sequence[str]] = SATMAE_GROUPS,
        bands: Sequence[str] = SATMAE_BANDS,
        input_bands: Sequence[str] = SENTINEL2_BANDS,
        **kwargs: Any,
    ) -> None:
        """Initialize a new GroupPatchEmbed instance.

        Args:
            img_size: Input size.
            patch_size: Patch size.
            in_chans: Channels the model was built for; must be
                ``len(input_bands)`` or ``len(bands)`` (``None``: either).
            embed_dim: Token width.
            groups: Band names of each group.
            bands: Names of the kept bands, in the order of a reduced input.
            input_bands: Names of all bands, in the order of a full input.
            **kwargs: Passed to each timm ``PatchEmbed`` (``bias``,
                ``dynamic_img_pad``, ``device``, ``dtype``).

        Raises:
            ValueError: If the bands or groups are inconsistent.
        """
        if not groups or any(not g for g in groups):
            raise ValueError(f'groups must be non-empty lists of band names: {groups}')
        flat = [b for g in groups for b in g]
        if len(set(flat)) != len(flat):
            raise ValueError(f'a band appears in more than one group: {groups}')
        _indices(bands, input_bands, 'bands')
        full = [_indices(g, input_bands, f'group {list(g)}') for g in groups]
        kept = [_indices(g, bands, f'group {list(g)}') for g in groups]
        if in_chans is not None and in_chans not in (len(input_bands), len(bands)):
            raise ValueError(
                f'in_chans={in_chans} does not match the configured bands: expected '
                f'{len(input_bands)} ({", ".join(input_bands)}) or {len(bands)} '
                f'({", ".join(bands)})'
            )
        super().__init__(
            PatchEmbed(img_size, patch_size, len(g), embed_dim, **kwargs)
            for g in groups
        )
        self.groups = tuple(tuple(g) for g in groups)
        self.bands = tuple(bands)
        self.input_bands = tuple(input_bands)
        first = cast(PatchEmbed, self[0])
        self.img_size = first.img_size
        self.patch_size = first.patch_size
        self.grid_size = first.grid_size
        self.num_patches = first.num_patches
        self.group_sizes = [len(g) for g in groups]
        # Bands of a full / reduced input, reordered group after group.
        self.register_buffer(
            'full_index', torch.tensor([i for g in full for i in g]), persistent=False
        )
        self.register_buffer(
            'kept_index', torch.tensor([i for g in kept for i in g]), persistent=False
        )
        self.init_weights()

    @property
    def num_groups(self) -> int:
        """Number of band groups."""
        return len(self.groups)

    def init_weights(self) -> None:
        """Initialise each projection like a linear layer (xavier-uniform), as MAE does."""
        for embed in self:
            weight = cast(PatchEmbed, embed).proj.weight
            nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Down-sampling factor of the token grid (the patch size)."""
        return cast(PatchEmbed, self[0]).feat_ratio(as_scalar)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid of an input of *img_size*."""
        return cast(PatchEmbed, self[0]).dynamic_feat_size(img_size)

    def group_indices(self, num_channels: int) -> Tensor:
        """Channel indices of the groups' bands, group after group.

        Args:
            num_channels: Channels of the input.

        Returns:
            Indices into the input's channels (split by ``group_sizes``).

        Raises:
            ValueError: If *num_channels* fits neither band list.
        """
        if num_channels == len(self.input_bands):
            return cast(Tensor, self.full_index)
        if num_channels == len(self.bands):
            return cast(Tensor, self.kept_index)
        raise ValueError(
            f'input has {num_channels} channels, but the model is configured for '
            f'{len(self.input_bands)} bands ({", ".join(self.input_bands)}) or the '
            f'{len(self.bands)} kept bands ({", ".join(self.bands)})'
        )

    def split(self, x: Tensor) -> list[Tensor]:
        """The bands of each group of an image batch.

        Args:
            x: ``(B, C, H, W)`` with ``C`` either band list's length.

        Returns:
            One ``(B, C_g, H, W)`` tensor per group.
        """
        grouped = x.index_select(1, self.group_indices(x.shape[1]))
        return list(grouped.split(self.group_sizes, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Embed every group's patches.

        Args:
            x: ``(B, C, H, W)`` image batch.

        Returns:
            ``(B, G, L, D)`` tokens: G groups of L patches.
        """
        return torch.stack(
            [embed(part) for embed, part in zip(self, self.split(x), strict=True)],
            dim=1,
        )
