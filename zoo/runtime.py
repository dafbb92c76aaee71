"""Where a fine-tuning run executes: the device, mixed precision, the processes of a distributed run
(torchrun/DDP) and what they must agree on, and seeding."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from zoo.config import FinetuneConfig
from zoo.errors import InputError, ZooError


# Environment: device, precision, distributed


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world_size: int
    owns_process_group: bool = False  # finetune() initialised it, so finetune() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def auto_amp(capability: tuple[int, int] | None) -> str:
    """`--amp auto`: bf16 where the GPU computes it natively (compute capability 8.0 and up: A100, H100,
    RTX 30xx and later), fp16 with loss scaling before that (V100, T4), off on CPU (`capability` None).
    Not `torch.cuda.is_bf16_supported()`: it counts emulation, which is slower than fp32 on a V100."""
    if capability is None:
        return "off"
    return "bf16" if capability[0] >= 8 else "fp16"


def start_runtime(config: FinetuneConfig) -> Runtime:
    """The device and precision `config` asks for, checked against this machine, and the process group of a
    torchrun launch (WORLD_SIZE, RANK, LOCAL_RANK), initialised here unless the caller did."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    use_cuda = cuda and config.device != "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         "start at most that many processes per node (torchrun --nproc-per-node), or pass --device cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    amp = config.amp
    if amp == "auto":
        amp = auto_amp(torch.cuda.get_device_capability(device) if use_cuda else None)
    if amp != "off" and not use_cuda:
        raise InputError(f"--amp {amp}: mixed precision is for CUDA here; use --amp off on CPU")
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        owns = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    return Runtime(device, dtype, rank, world_size, owns)


def default_workers(runtime: Runtime) -> int:
    """DataLoader workers when --workers is not given: none on CPU (the training threads need the cores),
    on CUDA enough processes to decode and augment ahead of the GPU: the cores shared by the node's
    ranks, one left to each rank's training thread, at most 16 (JPEG decoding and resizing keep up with
    about 150 images/s per worker: an H200 trains EfficientNet-Lite0 at ~3,000/s, benchmarks/gpu_check.py)."""
    if runtime.device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world_size)))
    return max(0, min(16, per_rank - 1))


@contextlib.contextmanager
def cuda_math(runtime: Runtime):
    """TF32 matmuls and convolutions while training on CUDA (Ampere and later; a 10-bit mantissa on the
    inputs, fp32 accumulation: PyTorch's recommended setting for training), restored afterwards so the
    caller's own numerics (an export parity check, say) stay exact. cuDNN's algorithm search
    (`cudnn.benchmark`) stays off: on an H200 its first epoch took 11-18 s longer per run and precision for
    EfficientNet-Lite0, while a loop without it trained at 2,800-3,600 images/s (benchmarks/gpu_check.py)."""
    if runtime.device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_main(runtime: Runtime, action: Callable[[], None]) -> None:
    """`action` on rank 0 only, the other ranks waiting; a ZooError it raises is raised on every rank
    (so no rank is left waiting in a collective for one that stopped)."""
    if not runtime.distributed:
        action()
        return
    failure: list[str | None] = [None]
    if runtime.is_main:
        try:
            action()
        except ZooError as exc:
            failure = [str(exc)]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise InputError(failure[0])


def agree(runtime: Runtime, decision: bool) -> bool:
    """Rank 0's `decision` on every rank (early stopping: a rank that stopped alone would hang the others)."""
    if not runtime.distributed:
        return decision
    flag = torch.tensor([int(decision)], device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sync_buffers(model: nn.Module) -> None:
    """BatchNorm running statistics from rank 0 to every rank: DDP syncs gradients, not buffers
    updated after its last broadcast, so without this the ranks' evaluations would differ."""
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def state_sha256(model: nn.Module) -> str:
    """sha256 of the weights and buffers in memory (the DDP tests compare ranks with it)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()

