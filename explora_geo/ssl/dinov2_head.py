"""The shared DINO/iBOT projection head of DinoV2 pre-training.

ExPLoRA trains one head from scratch for both the image-level (DINO, class
token) and the patch-level (iBOT, masked patch tokens) losses, because the
released DinoV2 checkpoints have no heads: an MLP ``D -> 2048 -> 2048 -> 256``
with GELU, L2 normalisation, and a weight-normalised linear layer ``256 -> K``
(K = 65536 prototypes) without bias whose gain starts at 1, so the initial
logits are cosine similarities between the bottleneck feature and the
prototypes. As in DinoV2 and the ExPLoRA training code, the gain is trained
with the prototypes: DinoV2's ``DINOHead`` fills ``weight_g`` with 1 without
freezing it, and its optimiser puts every parameter named ``last_layer`` (gain
included) in the group whose learning rate is zero for the first iterations.

lightly's :class:`~lightly.models.modules.heads.DINOProjectionHead` is this
head (the MLP with DinoV2's truncated-normal initialisation, L2 normalisation,
a weight-normalised last layer with the gain filled with 1), so it is reused
with one change: its last layer uses
the deprecated hook-based ``torch.nn.utils.weight_norm``, which keeps the
computed weight as a non-leaf tensor attribute, so that the module can be
neither deep-copied nor pickled (``strategy='ddp_spawn'`` pickles the model);
its replacement :func:`torch.nn.utils.parametrizations.weight_norm` refuses
pickling too. :class:`WeightNormLinear` computes the same
``W = g * v / ||v||`` (norm over each output row) with plain parameters named
as in DinoV2 (``weight_g``, ``weight_v``).

lightly's ``cancel_last_layer_gradients`` counts epochs and drops the
gradients; DinoV2 instead sets the learning rate of the last layer to zero for
the first iterations (the optimiser state still sees the gradients), which
:class:`~explora_geo.tasks.ExPLoRADINOv2` does with a separate parameter group.

.. versionadded:: 0.1
"""

import warnings

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import DINOProjectionHead
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight ``g * v / ||v||`` (rows normalised).

    The computation of ``torch.nn.utils.weight_norm(nn.Linear(...))`` with
    ``dim=0``, as plain parameters so that the module can be copied and pickled.

    .. versionadded:: 0.1
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        """Initialize a new WeightNormLinear instance.

        ``v`` starts as an ``nn.Linear`` weight (its default initialisation) and
        ``g`` as its row norms, so the initial weight equals ``v``.

        Args:
            in_features: Input width.
            out_features: Output width.
        """
        super().__init__()
        weight = nn.Linear(in_features, out_features, bias=False).weight.detach()
        self.weight_g = nn.Parameter(weight.norm(dim=1, keepdim=True))
        self.weight_v = nn.Parameter(weight.clone())

    @property
    def weight(self) -> Tensor:
        """The effective weight ``g * v / ||v||``."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: Input ``(..., in_features)``.

        Returns:
            Output ``(..., out_features)``.
        """
        return F.linear(x, self.weight)


class DINOv2Head(DINOProjectionHead):
    """DinoV2's shared DINO/iBOT head; the weight-norm gain starts at 1.

    Parameter names: ``layers.{0,2,4}.{weight,bias}`` (the MLP),
    ``last_layer.weight_v`` (the prototypes) and ``last_layer.weight_g`` (the
    gain, all ones at first); all are trainable, as in DinoV2.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
    ) -> None:
        """Initialize a new DINOv2Head instance.

        Args:
            in_dim: Width of the encoder's tokens.
            hidden_dim: Width of the two hidden MLP layers.
            bottleneck_dim: Width of the L2-normalised bottleneck.
            num_prototypes: Number of prototypes K (output logits).

        Raises:
            ValueError: If a dimension is not positive.
        """
        dims = {
            'in_dim': in_dim,
            'hidden_dim': hidden_dim,
            'bottleneck_dim': bottleneck_dim,
            'num_prototypes': num_prototypes,
        }
        bad = {k: v for k, v in dims.items() if v < 1}
        if bad:
            raise ValueError(f'DINOv2Head dimensions must be >= 1, got {bad}')
        # The hook-based weight norm built here is replaced below; its
        # deprecation notice is noise.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                'ignore', message='.*weight_norm.*', category=FutureWarning
            )
            super().__init__(
                input_dim=in_dim,
                hidden_dim=hidden_dim,
                bottleneck_dim=bottleneck_dim,
                output_dim=num_prototypes,
                batch_norm=False,
                freeze_last_layer=-1,
                norm_last_layer=False,
            )
        self.last_layer = WeightNormLinear(bottleneck_dim, num_prototypes)
        with torch.no_grad():
            self.last_layer.weight_g.fill_(1)
        self.num_prototypes = num_prototypes

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the prototype layer: gain and prototypes.

        DinoV2 gives them a zero learning rate for the first iterations.
        """
        return [p for p in self.last_layer.parameters() if p.requires_grad]
