"""An EMA teacher that shares the student's frozen tensors.

In DinoV2 the teacher is a second copy of the network whose parameters follow
the student's by an exponential moving average (EMA). Under ExPLoRA most of the
network is frozen: student and teacher hold identical frozen tensors, so a
deep-copied teacher would keep a second copy of ~95% of the weights for
nothing. :class:`EMATeacher` stores only the EMA of the *trainable* tensors and
evaluates the student's own module with those values swapped in for the
duration of the call; every frozen tensor is read from the student itself, so
its memory is shared.

Design choices:

* The EMA tensors are **buffers** of the teacher, arranged in a module tree
  mirroring the student, so their state-dict names are the student's parameter
  names (``<attr>.blocks.23.attn.qkv.weight``). Lightning checkpoints therefore
  hold and restore the EMA state; frozen tensors are saved once, with the
  student.
* The student is **not** registered as a submodule of the teacher (that would
  list every frozen tensor twice in state dicts and parameter iterators); its
  owner registers it.
* The teacher runs the student in **eval mode** (no dropout or drop-path), as
  DinoV2 keeps its teacher in eval mode, and without autograd.
* The swap is :func:`swapped_tensors`, not :func:`torch.func.functional_call`:
  the latter replaces registered parameters, but FSDP (``use_orig_params``)
  exposes its unsharded parameters during the forward as plain instance
  attributes that shadow the registered ones, so the swap would be ignored.
* The update is DinoV2's ``t <- m t + (1 - m) s`` with ``torch._foreach_mul_``
  and ``torch._foreach_add_``, over the trainable tensors only (LoRA A and B
  averaged separately). Frozen tensors never change, so their EMA would be the
  identity.

Distributed training: under DDP every rank holds the student and the EMA
buffers, and the update is deterministic, so ranks stay identical (DDP's
per-step buffer broadcast is harmless; ``DDPStrategy(broadcast_buffers=False)``
skips it). Under FSDP the swap needs the student's full parameters: it works
when the student is not split into nested FSDP units (FSDP's own pre-forward
hooks would otherwise write the student's values back over the swapped ones),
i.e. with Lightning's ``FSDPStrategy`` without an ``auto_wrap_policy``, and the
update must run inside ``FullyShardedDataParallel.summon_full_params``;
:class:`~explora_geo.tasks.ExPLoRADINOv2` does both and checks the wrapping.

.. versionadded:: 0.1
"""

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

R = TypeVar('R')


@contextmanager
def swapped_tensors(module: nn.Module, tensors: dict[str, Tensor]) -> Iterator[None]:
    """Temporarily replace tensors of *module* by name, wherever they live.

    A tensor may be a registered parameter or buffer, or a plain instance
    attribute (FSDP's unsharded views); each is replaced where it is found and
    restored on exit.

    Args:
        module: The module.
        tensors: Replacement tensors by dotted name.

    Yields:
        Nothing; the replacements are in place inside the context.

    Raises:
        KeyError: If *module* has no tensor of a given name.
    """
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for name, value in tensors.items():
            *path, leaf = name.split('.')
            owner = module.get_submodule('.'.join(path))
            stores: list[dict[str, Any]] = [
                owner.__dict__,
                cast(dict[str, Any], owner._parameters),
                cast(dict[str, Any], owner._buffers),
            ]
            for store in stores:
                if leaf in store:
                    saved.append((store, leaf, store[leaf]))
                    store[leaf] = value
                    break
            else:
                raise KeyError(f'{type(module).__name__} has no tensor named {name!r}')
        yield
    finally:
        for store, leaf, old in reversed(saved):
            store[leaf] = old


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class EMATeacher(nn.Module):
    """EMA of a student's trainable tensors, evaluated with its frozen ones.

    Example::

        teacher = EMATeacher(student)
        out = teacher(x)  # the student's forward with EMA weights
        teacher.update(momentum=0.994)  # after each optimiser step

    .. versionadded:: 0.1
    """

    def __init__(self, student: nn.Module) -> None:
        """Initialize a new EMATeacher instance, equal to *student*.

        Args:
            student: The network being trained. Its parameters with
                ``requires_grad`` get EMA copies; all others are shared.

        Raises:
            ValueError: If *student* has no trainable parameter.
        """
        super().__init__()
        trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                f'{type(student).__name__} has no trainable parameter to average'
            )
        # A tuple keeps nn.Module from registering the student as a child.
        self._student = (student,)
        for name, param in trainable:
            *path, leaf = name.split('.')
            parent: nn.Module = self
            for part in path:
                child = parent._modules.get(part)
                if child is None:
                    child = nn.Module()
                    parent.add_module(part, child)
                parent = child
            parent.register_buffer(leaf, param.detach().clone())

    @property
    def student(self) -> nn.Module:
        """The module whose frozen tensors the teacher uses."""
        return self._student[0]

    def ema_tensors(self) -> dict[str, Tensor]:
        """The EMA tensors, by the student's parameter names."""
        return dict(self.named_buffers())

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """One EMA step: ``t <- momentum * t + (1 - momentum) * s``.

        Args:
            momentum: The teacher momentum m in ``[0, 1]``.

        Raises:
            ValueError: If *momentum* is outside ``[0, 1]``.
            KeyError: If the student lost a tensor the teacher averages.
        """
        if not 0 <= momentum <= 1:
            raise ValueError(f'momentum must be in [0, 1], got {momentum}')
        params = dict(self.student.named_parameters())
        ema = self.ema_tensors()
        missing = sorted(set(ema) - set(params))
        if missing:
            raise KeyError(f'student has no parameters named {missing}')
        teacher = list(ema.values())
        student = [params[n].detach() for n in ema]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)

    def run(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Call ``fn(student, *args, **kwargs)`` with the EMA tensors swapped in.

        Runs without autograd and with the student in eval mode.

        Args:
            fn: A function of the module and the inputs, e.g. a token extractor.
            *args: Positional inputs of *fn*.
            **kwargs: Keyword inputs of *fn*.

        Returns:
            What *fn* returns.
        """
        student = self.student
        with (
            torch.no_grad(),
            _eval_mode(student),
            swapped_tensors(student, self.ema_tensors()),
        ):
            return fn(student, *args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The student's forward with the EMA tensors (no autograd, eval mode).

        Args:
            *args: Positional inputs of the student.
            **kwargs: Keyword inputs of the student.

        Returns:
            The student's output.
        """
        return self.run(lambda module, *a, **k: module(*a, **k), *args, **kwargs)

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """A standalone copy of the teacher network.

        A deep copy of the student (same structure, attributes and
        ``requires_grad`` flags) whose trainable tensors hold the EMA values.
        Use it for exports; it duplicates the frozen tensors.

        Returns:
            The copy.
        """
        teacher = copy.deepcopy(self.student)
        params = dict(teacher.named_parameters())
        for name, value in self.ema_tensors().items():
            params[name].copy_(value)
        return teacher
