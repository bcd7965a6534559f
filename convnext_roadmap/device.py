"""Which device, precision and CPUs a process trains with: `--device` parsed and checked, the GPU of a rank, the
autocast choice, cuDNN/TF32, and the CPUs the node gives a process (its loader workers and threads)."""

from __future__ import annotations

import torch

from .errors import RoadmapError


def parse_device(device: str) -> torch.device | None:
    """`--device` as torch reads it (None for auto), or one line naming the flag."""
    if device == "auto":
        return None
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):  # what the training loop and its tests know
        raise RoadmapError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return parsed


def pick_device(device: str) -> torch.device:
    """The device to train on here: `--device`, or CUDA where there is one."""
    parsed = parse_device(device)
    if parsed is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise RoadmapError(f"--device {device}: no CUDA device is available here")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise RoadmapError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device of one DDP rank: on CUDA, its local rank's GPU among those its task sees. A task may see every
    GPU of its node (one task per node, or SLURM without GPU binding) or only its own: the rank modulo the count
    is right for both, as in the official ConvNeXt code."""
    picked = pick_device(device)
    if picked.type != "cuda":
        return picked
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def train_device(device: str, world: int) -> torch.device:
    """The device this process trains on, made CUDA's current one where it is numbered (a rank's GPU, or `cuda:N`
    in-process), so that what asks the current device (kernels, NCCL, the allocator) asks the run's; `cuda` alone
    keeps the current one (`torch.cuda.set_device` takes only an indexed device)."""
    import os

    mine = pick_device(device) if world == 1 else rank_device(device, int(os.environ.get("LOCAL_RANK", 0)))
    if mine.type == "cuda" and mine.index is not None:
        torch.cuda.set_device(mine)
    return mine


CPUS_VAR = "ROADMAP_CPUS"  # a local launch's share of the cores for each process it starts


def cpus_per_process() -> int:
    """The CPUs this process may use, itself and its loader workers: a local launch's share (ROADMAP_CPUS), a SLURM
    task's cpus-per-task, or this process's CPU affinity shared with the other ranks of its job on this node."""
    import os

    for given in (os.environ.get(CPUS_VAR), os.environ.get("SLURM_CPUS_PER_TASK")):
        if given and given.isdigit() and int(given) > 0:
            return int(given)
    return max(1, cpus_allowed() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def cpus_allowed() -> int:
    """The CPUs this process may run on (its affinity: a cpuset, taskset, a SLURM allocation), not the machine's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity (macOS)
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loader_workers(workers: int | str) -> int:
    """`data.workers` in this process: as given, or (auto) one per CPU it may use."""
    return cpus_per_process() if workers == "auto" else workers


def backend(device: torch.device) -> str:
    """torch.distributed's backend for the device the ranks train on (not for whether the machine has CUDA)."""
    return "nccl" if device.type == "cuda" else "gloo"


def configure_backends(train_cfg, device: torch.device) -> None:
    """On CUDA, cuDNN's autotuner and TF32 as the recipe says (`train.cudnn_benchmark`, `train.tf32`): settings of
    the process, which trains one run at a time."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = train_cfg.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = train_cfg.tf32


def autocast_dtype(amp: bool | str, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """`train.amp` on this device: the autocast dtype (None: fp32), and a note when `auto` chose fp32."""
    if amp in (True, "bf16"):
        return torch.bfloat16, None
    if amp == "fp16":
        return torch.float16, None
    if amp != "auto":
        return None, None
    if device.type == "cuda":  # the run's GPU, not the current one; is_bf16_supported() counts a V100's emulation
        native, where = bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8, "this GPU"
    else:
        native, where = torch.ops.mkldnn._is_mkldnn_bf16_supported(), "this CPU"
    if native:
        return torch.bfloat16, None
    return None, (f"train.amp=auto: {where} has no native bf16, so it trained in fp32 (train.amp=fp16 trains in "
                  f"fp16 with a GradScaler; train.amp=bf16 forces bf16)")
