"""Numeric precision chosen for the device that runs the job.

bf16 mixed precision is the fastest choice where the hardware computes bf16
natively (CUDA GPUs of compute capability 8.0 and later; x86 CPUs with
AVX512-BF16 or AMX-BF16; arm64 CPUs with the BF16 extension), and the slowest
where it does not: without those instructions PyTorch emulates bf16 matrix
products on the CPU, about 100x slower than fp32. :class:`AutoPrecision` is a
Lightning precision plugin that picks per device; recipes use it with::

    trainer:
      plugins:
        - class_path: explora_geo.precision.AutoPrecision

The same detection and a short report of the machine's relevant instruction
sets and library versions are used by the scripts in ``benchmarks/``.

.. versionadded:: 0.1
"""

import os
import platform
from collections.abc import Callable, Collection, Generator, Mapping
from contextlib import contextmanager, nullcontext
from functools import cache
from typing import Any, Literal

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer

#: The Lightning precision strings this module chooses between.
PrecisionName = Literal['32-true', 'bf16-mixed', '16-mixed']

#: CPU flags (``/proc/cpuinfo`` spelling) that mean bf16 is computed natively.
BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16', 'bf16')

#: CPU flags shown in reports: the bf16 ones and the vector ISAs below them.
REPORTED_CPU_FLAGS = ('avx512_bf16', 'amx_bf16', 'avx512f', 'avx2', 'bf16', 'sve')

#: ``ONEDNN_MAX_CPU_ISA`` values that cap oneDNN below its bf16 instructions.
NO_BF16_ONEDNN_ISAS = frozenset(
    {
        'SSE41',
        'AVX',
        'AVX2',
        'AVX2_VNNI',
        'AVX2_VNNI_2',
        'AVX512_CORE',
        'AVX512_CORE_VNNI',
    }
)

#: Short command-line names of the precisions benchmarks accept.
PRECISION_CHOICES = ('auto', '32', 'bf16')

# torch.cpu.get_capabilities() spells a few flags differently from /proc/cpuinfo.
_TORCH_FLAG_NAMES = {'avx512_f': 'avx512f', 'avx512_bw': 'avx512bw'}


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags, in ``/proc/cpuinfo`` spelling.

    Read from :func:`torch.cpu.get_capabilities` (portable across operating
    systems) where this PyTorch has it, and from ``/proc/cpuinfo`` on Linux.

    Returns:
        Lower-case flag names, e.g. ``{'avx2', 'avx512f', 'avx512_bf16', ...}``.
    """
    flags: set[str] = set()
    get_capabilities = getattr(torch.cpu, 'get_capabilities', None)
    if get_capabilities is not None:
        for name, value in get_capabilities().items():
            if value is True:
                flags.add(_TORCH_FLAG_NAMES.get(name, name))
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() in ('flags', 'Features'):
                    flags.update(value.split())
                    break
    except OSError:
        pass
    return frozenset(flags)


def onednn_isa_cap() -> str | None:
    """The instruction-set cap set for oneDNN in the environment, if any.

    Returns:
        The upper-cased value of ``ONEDNN_MAX_CPU_ISA`` (or its old name
        ``DNNL_MAX_CPU_ISA``), or None when neither is set.
    """
    value = os.environ.get('ONEDNN_MAX_CPU_ISA') or os.environ.get('DNNL_MAX_CPU_ISA')
    return value.strip().upper() if value else None


def cpu_computes_bf16(flags: Collection[str], isa_cap: str | None = None) -> bool:
    """Whether a CPU with *flags* computes bf16 matrix products natively.

    Args:
        flags: The CPU's instruction-set flags, ``/proc/cpuinfo`` spelling.
        isa_cap: A ``ONEDNN_MAX_CPU_ISA`` value; one below AVX512_CORE_BF16
            (e.g. ``'AVX2'``) keeps PyTorch's bf16 kernels off those
            instructions, so bf16 is emulated even on a capable CPU.

    Returns:
        True when one of :data:`BF16_CPU_FLAGS` is present and not capped away.
    """
    if isa_cap is not None and isa_cap in NO_BF16_ONEDNN_ISAS:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cuda_computes_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (not emulated).

    Returns:
        False without CUDA.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(
        including_emulation=False
    )


def choose_precision(
    device_type: str, *, cuda_bf16: bool = False, cpu_bf16: bool = False
) -> PrecisionName:
    """The fastest safe training precision for a device.

    Args:
        device_type: ``'cuda'``, ``'cpu'``, ``'mps'``, ...
        cuda_bf16: Whether the CUDA device computes bf16 natively.
        cpu_bf16: Whether the CPU computes bf16 natively.

    Returns:
        ``'bf16-mixed'`` on a CUDA device or CPU with native bf16,
        ``'16-mixed'`` on CUDA devices without it, ``'32-true'`` elsewhere.
    """
    if device_type == 'cuda':
        return 'bf16-mixed' if cuda_bf16 else '16-mixed'
    if device_type == 'cpu' and cpu_bf16:
        return 'bf16-mixed'
    return '32-true'


def detect_precision(device_type: str) -> PrecisionName:
    """:func:`choose_precision` with the capabilities of this machine.

    Args:
        device_type: The device the job runs on.

    Returns:
        The chosen Lightning precision string.
    """
    return choose_precision(
        device_type,
        cuda_bf16=device_type == 'cuda' and cuda_computes_bf16(),
        cpu_bf16=device_type == 'cpu'
        and cpu_computes_bf16(cpu_flags(), onednn_isa_cap()),
    )


def resolve_precision(choice: str, device_type: str) -> PrecisionName:
    """Turn a command-line choice into a Lightning precision string.

    Args:
        choice: ``'auto'`` (:func:`detect_precision`), ``'32'`` or ``'bf16'``.
        device_type: The device the job runs on.

    Returns:
        ``'32-true'`` or ``'bf16-mixed'`` (or ``'16-mixed'`` for ``'auto'``
        on a CUDA device without bf16).

    Raises:
        ValueError: If *choice* is not one of :data:`PRECISION_CHOICES`.
    """
    if choice == 'auto':
        return detect_precision(device_type)
    if choice == '32':
        return '32-true'
    if choice == 'bf16':
        return 'bf16-mixed'
    raise ValueError(
        f'precision must be one of {", ".join(PRECISION_CHOICES)}, got {choice!r}'
    )


def autocast(
    precision: PrecisionName, device_type: str
) -> torch.autocast | nullcontext[None]:
    """The autocast context that runs code at *precision* on *device_type*.

    Args:
        precision: A Lightning precision string from this module.
        device_type: The device the code runs on.

    Returns:
        ``torch.autocast`` for the mixed precisions, a null context for fp32.
    """
    if precision == '32-true':
        return nullcontext()
    dtype = torch.bfloat16 if precision == 'bf16-mixed' else torch.float16
    return torch.autocast(device_type, dtype=dtype)


def environment_report(threads: int | None = None) -> str:
    """One paragraph naming the machine, its bf16-relevant ISA and versions.

    Args:
        threads: The number of threads the measurement used, if fixed.

    Returns:
        Lines ``machine: ...``, ``isa: ...`` and ``versions: ...``.
    """
    flags = cpu_flags()
    caps: Mapping[str, Any] = getattr(torch.cpu, 'get_capabilities', dict)()
    cpu_name = caps.get('cpu_name') or platform.processor() or 'unknown CPU'
    machine = (
        f'machine: {cpu_name}, {platform.machine()}, {os.cpu_count()} logical cores'
    )
    if threads is not None:
        machine += f', {threads} threads'
    if torch.cuda.is_available():
        machine += f'; GPU {torch.cuda.get_device_name()}'
    isa = ', '.join(
        f'{flag} {"yes" if flag in flags else "no"}' for flag in REPORTED_CPU_FLAGS
    )
    isa = f'isa: {isa}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}'
    for name in ('ONEDNN_MAX_CPU_ISA', 'ATEN_CPU_CAPABILITY'):
        if os.environ.get(name):
            isa += f'; {name}={os.environ[name]}'
    bf16 = cpu_computes_bf16(flags, onednn_isa_cap())
    isa += f'; CPU native bf16: {"yes" if bf16 else "no"}'
    versions = (
        f'versions: Python {platform.python_version()}, torch {torch.__version__}, '
        f'{platform.system()} {platform.release()}'
    )
    if torch.cuda.is_available():
        versions += f', CUDA {torch.version.cuda}'
    return '\n'.join([machine, isa, versions])


def _device_type(model: nn.Module) -> str | None:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device.type
    return None


class AutoPrecision(Precision):
    """Lightning precision plugin that picks bf16, fp16 or fp32 for the device.

    The choice (:func:`choose_precision`) is made when Lightning connects the
    plugin to the model, on the device the model was moved to, and logged
    once. Until then it assumes the device Lightning's ``accelerator='auto'``
    would pick (CUDA if available, else CPU). Use it instead of the
    ``precision`` flag (Lightning refuses both together) with the
    single-device and DDP strategies; FSDP and DeepSpeed need their own
    precision plugins.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        """Initialize a new AutoPrecision instance."""
        self._plugin = Precision()
        self._logged = False
        self._select('cuda' if torch.cuda.is_available() else 'cpu')

    def _select(self, device_type: str) -> None:
        precision = detect_precision(device_type)
        self.device_type = device_type
        self.precision = precision
        if precision == '32-true':
            self._plugin = Precision()
        else:
            self._plugin = MixedPrecision(precision, device_type)

    def connect(
        self, model: nn.Module, optimizers: list[Optimizer], lr_schedulers: list[Any]
    ) -> tuple[nn.Module, list[Optimizer], list[Any]]:
        """Choose the precision for the device of *model* and log the choice."""
        device_type = _device_type(model)
        if device_type is not None and device_type != self.device_type:
            self._select(device_type)
        if not self._logged:
            why = {
                'bf16-mixed': 'native bf16',
                '16-mixed': 'CUDA without bf16',
                '32-true': 'no native bf16',
            }[self.precision]
            rank_zero_info(
                f'AutoPrecision: {self.precision} on {self.device_type} ({why})'
            )
            self._logged = True
        return self._plugin.connect(model, optimizers, lr_schedulers)

    @contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        """Autocast for the mixed precisions, nothing for fp32."""
        with self._plugin.forward_context():
            yield

    def pre_backward(self, tensor: torch.Tensor, module: Any) -> torch.Tensor:
        """Scale the loss when fp16 needs a gradient scaler."""
        return self._plugin.pre_backward(tensor, module)

    def optimizer_step(  # type: ignore[override]
        self,
        optimizer: Any,
        model: Any,
        closure: Callable[[], Any],
        **kwargs: Any,
    ) -> Any:
        """Step through the gradient scaler when there is one."""
        return self._plugin.optimizer_step(optimizer, model, closure, **kwargs)

    def clip_gradients(self, optimizer: Optimizer, *args: Any, **kwargs: Any) -> None:
        """Clip gradients as the chosen precision's plugin does."""
        self._plugin.clip_gradients(optimizer, *args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's state (empty without one)."""
        return self._plugin.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the gradient scaler's state."""
        self._plugin.load_state_dict(dict(state_dict))
