"""Device, precision and threads are decided here, once, never inside a model."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field

import torch

from cnnkit.errors import DeviceError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16: what the run computes in (train.precision "auto" resolved)
    threads: int
    channels_last: bool
    warnings: list[str] = field(default_factory=list)  # said once when the run starts
    chosen: str = ""  # why the precision is what it is, when train.precision was "auto"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """Mixed precision for the forward pass; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def describe(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            where = f"{self.device} ({name})"
        else:
            where = f"cpu ({self.threads} threads)"
        chosen = f" ({self.chosen})" if self.chosen else ""
        extras = ", channels_last" if self.channels_last else ""
        return f"device {where}, precision {self.precision}{chosen}{extras}"


def format_bytes(n: float) -> str:
    """A memory size as people read it: 512 B, 5.9 MiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def resolve_device(spec: str) -> torch.device:
    """auto → CUDA when available, else CPU. Asking for CUDA on a machine without it is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"train.device={spec}: CUDA is not available on this machine; "
                          "use train.device=cpu or auto")
    device = torch.device(spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"train.device={spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


# bf16 convolutions and matmuls run natively from compute capability 8.0 (Ampere) on. Below it
# torch 2.14's `torch.cuda.is_bf16_supported()` still says True (it counts emulation), and cuDNN
# then fails at the first bf16 convolution.
BF16_MIN_CAPABILITY = (8, 0)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` (the one the run chose, not the current one) computes in bf16 natively."""
    if device.type != "cuda":
        return True  # the CPU: autocast's bf16 kernels exist everywhere (fast only where cpu_bf16_native)
    return torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX) for oneDNN's convolutions.

    Without them, bf16 convolutions fall back to torch's generic im2col + reference GEMM: measured
    on an AVX2-only AMD EPYC (2 cores), the fast model's forward and backward ran 14× slower in bf16
    than in fp32 (25 against 360 img/s, scripts/bench_micro_batch.py)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matmuls and convolutions on `device` take native instructions (the fast path)."""
    return bf16_supported(device) if device.type == "cuda" else cpu_bf16_native()


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """train.precision "auto" → (bf16 where the device computes it natively, else fp32; why)."""
    if precision != "auto":
        return precision, ""
    if device.type == "cuda":
        native = bf16_supported(device)
        return ("bf16", "auto: native on this GPU") if native else ("fp32", "auto: this GPU has no native bf16")
    if cpu_bf16_native():
        return "bf16", "auto: this CPU has AVX512-BF16/AMX"
    return "fp32", "auto: this CPU has no bf16 instructions"


def tune_cpu_allocator() -> None:
    """Keep glibc from mmap/munmap-ing every multi-MB activation buffer on each step.

    Measured on the 2-core CPU: the first epochs ran ~30% slower until glibc's adaptive
    thresholds caught up. Raising them up front costs only memory that stays with the process.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


class _NoCudaRuntimeNote(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." (torch.utils.cpp_extension logs it
    when it is imported, as torch.compile's CPU backend does, on a machine with a CUDA toolkit or
    CUDA_HOME but no GPU): a CPU run never uses CUDA, and the line lands in the middle of its output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_note() -> None:
    """Silence that one warning, for a run that has chosen the CPU; every other warning still shows."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNote) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeNote())


def setup_runtime(device: str = "auto", precision: str = "fp32", threads: int | None = None,
                  channels_last: bool = False, deterministic: bool = False) -> Runtime:
    dev = resolve_device(device)
    precision, chosen = resolve_precision(precision, dev)
    warnings = []
    if precision == "bf16" and dev.type == "cpu" and not cpu_bf16_native():
        # Slow, not wrong: the run goes on (its numbers are bf16's), but the user should know why.
        warnings.append("train.precision=bf16 on a CPU without bf16 instructions (no AVX512-BF16/AMX): "
                        "convolutions take a generic fallback, ~14× slower than fp32 on such a CPU; "
                        "use --set train.precision=auto (bf16 only where it is native) or fp32")
    if precision == "fp16" and dev.type == "cpu":
        raise DeviceError("train.precision=fp16 needs CUDA; on the CPU use --set train.precision=bf16 or fp32 "
                          "(also when resuming an fp16 run)")
    if precision == "bf16" and not bf16_supported(dev):
        major, minor = torch.cuda.get_device_capability(dev)
        raise DeviceError(f"train.precision=bf16: {dev} ({torch.cuda.get_device_name(dev)}, compute capability "
                          f"{major}.{minor}) has no native bf16 (needs 8.0+); use --set train.precision=fp16 or fp32")
    # Under torchrun the cores are shared by the processes on this machine; oversubscribing
    # OpenMP threads makes every process crawl.
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n_threads = threads or max(1, (os.cpu_count() or 1) // local_procs)
    if dev.type == "cpu":
        tune_cpu_allocator()
        quiet_cuda_home_note()
    torch.set_num_threads(n_threads)
    if deterministic:
        # Same seed, same bits: no autotuned kernels, and deterministic algorithms where torch has them.
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif dev.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    return Runtime(dev, precision, n_threads, channels_last, warnings, chosen)
