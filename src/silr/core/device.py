"""Which torch device a run uses, and the settings that go with it.

`auto` picks CUDA, then Apple's MPS, then the CPU. On CUDA the network runs in bfloat16
autocast (tensor cores), cuDNN may pick its fastest kernels, and TF32 matmuls are allowed;
on the CPU everything stays float32 and deterministic. Both use channels_last memory: on
CUDA for the tensor cores, on the CPU because oneDNN's convolutions run faster in it
(hrnet_w18_small, decoder [16, 8], batch 16, 2 cores: 9.6 vs 5.8 training images/s).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from silr.core.errors import ConfigError
from silr.core.io import open_lock_file

__all__ = [
    "DEVICE_CHOICES", "DEVICE_ENV", "GPU_POOL_ENV", "LOCK_DIR_ENV", "NETWORK_MEMORY_FORMAT",
    "THREADS_ENV", "DeviceSetup",
    "claim_gpu", "device_for_run", "parse_gpu_pool", "select_device",
]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
# Placement of one process, outside params.yaml so that it never enters a stage's run-cache
# key (the same run on another device or thread count is the same experiment):
DEVICE_ENV = "SILR_DEVICE"  # overrides train.device: auto | cpu | cuda | cuda:N | mps
THREADS_ENV = "SILR_THREADS"  # intra-op CPU threads of this process (torch.set_num_threads)
GPU_POOL_ENV = "SILR_GPU_POOL"  # e.g. "0,1,2,3": each process claims a free one (parallel workers)
LOCK_DIR_ENV = "SILR_LOCK_DIR"  # where the GPU claims live (default: the system's temp folder)
# The network's memory layout everywhere it runs (training, validation, evaluation, predict):
# channels_last pays on both kinds of device, tensor cores on CUDA and oneDNN's NHWC kernels on
# the CPU (1.4x at 1 thread, batch 16; benchmarks/results/inference_layout.txt). Inputs must be
# laid out like the weights, so every caller takes it from here.
NETWORK_MEMORY_FORMAT = torch.channels_last
# Claims held by this process: the open lock file keeps the claim until the process exits.
_HELD_CLAIMS: list = []


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(requested: str = "auto", key: str = "train.device") -> torch.device:
    """The torch device for `requested` (auto | cpu | cuda | cuda:N | mps); ConfigError if it is
    not there."""
    kind, _, index = str(requested).partition(":")
    index_ok = kind == "cuda" and index.isascii() and index.isdigit()
    if kind not in DEVICE_CHOICES or (index and not index_ok):
        raise ConfigError(f"{key} must be one of {', '.join(DEVICE_CHOICES)} or cuda:N, "
                          f"got {requested!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {requested!r} but this machine has no usable CUDA device "
                          f"(use auto or cpu)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"{key} is {requested!r} but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not _mps_available():
        raise ConfigError(f"{key} is 'mps' but this machine has no usable MPS device "
                          f"(use auto or cpu)")
    return torch.device(requested)


def claim_gpu(pool: list[int], lock_dir: str | Path | None = None) -> int | None:
    """The first GPU of `pool` no other process holds, held by this process until it exits (an
    flock on `<lock_dir>/silr-gpu-<id>.lock`, released by the kernel even after a kill); None if
    all are taken. N parallel workers over a pool of N GPUs thus get one GPU each."""
    folder = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())
    for gpu in pool:
        handle = open_lock_file(folder / f"silr-gpu-{gpu}.lock")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD_CLAIMS.append(handle)
        return gpu
    return None


def parse_gpu_pool(text: str) -> list[int]:
    try:
        pool = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(f"{GPU_POOL_ENV} must list GPU indices like 0,1,2, "
                          f"got {text!r}") from None
    if not pool or min(pool) < 0:
        raise ConfigError(f"{GPU_POOL_ENV} must list GPU indices like 0,1,2, got {text!r}")
    return pool


def device_for_run(requested: str = "auto") -> torch.device:
    """The device of this process: $SILR_DEVICE if set, else `requested` (train.device); with
    $SILR_GPU_POOL and a CUDA device, a GPU of the pool that no other worker holds. Sets the
    CPU thread count from $SILR_THREADS."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        if not (threads.isascii() and threads.isdigit()) or int(threads) < 1:
            raise ConfigError(f"{THREADS_ENV} must be a whole number >= 1, got {threads!r}")
        torch.set_num_threads(int(threads))
    override = os.environ.get(DEVICE_ENV)
    key = DEVICE_ENV if override else "train.device"
    device = select_device(override or requested, key=key)
    pool_text = os.environ.get(GPU_POOL_ENV)
    if device.type != "cuda" or not pool_text or device.index is not None:
        return device
    pool = parse_gpu_pool(pool_text)
    if max(pool) >= torch.cuda.device_count():
        raise ConfigError(f"{GPU_POOL_ENV} is {pool_text!r} but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    gpu = claim_gpu(pool)
    if gpu is None:
        raise ConfigError(f"every GPU of {GPU_POOL_ENV}={pool_text} is held by another silr "
                          f"process (run at most {len(pool)} workers)")
    return torch.device("cuda", gpu)


@dataclass(frozen=True)
class DeviceSetup:
    """How the network runs on `device`."""

    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return NETWORK_MEMORY_FORMAT

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on CUDA (where tensor cores pay), a no-op elsewhere."""
        if self.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def configure(self) -> None:
        """Process-wide speed settings for CUDA (no effect on the CPU)."""
        if self.is_cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def describe(self) -> str:
        if self.is_cuda:
            index = self.device.index
            if index is None:
                index = torch.cuda.current_device()
            return f"cuda ({torch.cuda.get_device_name(index)}, bf16 autocast, channels_last)"
        if self.device.type == "cpu":
            return f"cpu ({torch.get_num_threads()} threads, float32)"
        return self.device.type
