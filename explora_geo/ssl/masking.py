"""Block-wise iBOT masks for a batch of global crops, as DinoV2 draws them.

DinoV2 masks a fraction (``mask_probability``, 0.5) of the images of a batch;
the masked images get target ratios spread evenly over ``mask_ratio``
(``[0.1, 0.5]``): ratio ``i`` is drawn in the ``i``-th of ``n`` equal
sub-intervals, so the batch covers the whole range. Each image's target count
is then reached with random rectangles (at least 4 patches, aspect ratio in
``[0.3, 1 / 0.3]``, at most half of the grid each); masks are shuffled over the
batch.

lightly's :func:`~lightly.models.utils.random_block_mask` implements exactly
this procedure (DinoV2's ``MaskingGenerator`` and collate function, with the
same draws from Python's :mod:`random`), so :class:`BlockMasking` only fixes
DinoV2's parameters and validates the grid.

.. versionadded:: 0.1
"""

from lightly.models.utils import random_block_mask
from torch import Tensor


class BlockMasking:
    """Draw DinoV2 block masks for a batch.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        mask_probability: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        min_patches_per_block: int = 4,
        max_block_fraction: float = 0.5,
        min_aspect: float = 0.3,
    ) -> None:
        """Initialize a new BlockMasking instance.

        Args:
            mask_probability: Fraction of the images that are masked.
            mask_ratio: Range of the fraction of patches masked in a masked image.
            min_patches_per_block: Smallest rectangle, in patches.
            max_block_fraction: Largest rectangle, as a fraction of the grid.
            min_aspect: Smallest aspect ratio of a rectangle (the largest is its
                inverse).

        Raises:
            ValueError: If a value is out of range.
        """
        low, high = mask_ratio
        if not 0 <= mask_probability <= 1:
            raise ValueError(
                f'mask_probability must be in [0, 1], got {mask_probability}'
            )
        if not 0 <= low <= high <= 1:
            raise ValueError(
                f'mask_ratio must be (low, high) with 0 <= low <= high <= 1, got {mask_ratio}'
            )
        if not 0 < min_aspect <= 1:
            raise ValueError(f'min_aspect must be in (0, 1], got {min_aspect}')
        self.mask_probability = mask_probability
        self.mask_ratio = (float(low), float(high))
        self.min_patches_per_block = min_patches_per_block
        self.max_block_fraction = max_block_fraction
        self.min_aspect = min_aspect

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Check that *grid* can hold a block.

        Args:
            grid: Patch grid ``(height, width)``.

        Raises:
            ValueError: If the grid is too small for a single block.
        """
        height, width = grid
        max_block = self.max_block_fraction * height * width
        if max_block < self.min_patches_per_block:
            raise ValueError(
                f'patch grid {height}x{width} is too small for block masking: a block '
                f'may cover at most {max_block:g} patches but needs at least '
                f'{self.min_patches_per_block}; use larger global crops'
            )

    def __call__(self, batch_size: int, grid: tuple[int, int]) -> Tensor:
        """Masks for *batch_size* images of *grid* patches.

        Args:
            batch_size: Number of images (both global crops of every sample).
            grid: Patch grid ``(height, width)``.

        Returns:
            Boolean masks ``(batch_size, height * width)`` on the CPU, True where
            the patch is replaced by the mask token.
        """
        self.check_grid(grid)
        height, width = grid
        masks = random_block_mask(
            size=(batch_size, height, width),
            batch_mask_ratio=self.mask_probability,
            min_image_mask_ratio=self.mask_ratio[0],
            max_image_mask_ratio=self.mask_ratio[1],
            min_num_masks_per_block=self.min_patches_per_block,
            # DinoV2's cap is the float 0.5 * H * W; keep it exact.
            max_num_masks_per_block=self.max_block_fraction * height * width,
            min_block_aspect_ratio=self.min_aspect,
        )
        return masks.flatten(1)
