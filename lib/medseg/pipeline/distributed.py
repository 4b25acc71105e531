"""Data-parallel training with PyTorch DistributedDataParallel.

Two ways in:

* ``run_distributed(world_size, fn, *args)`` starts ``world_size`` processes on this
  machine (one per GPU with NCCL, or CPU processes with gloo), runs ``fn(*args)`` in
  each inside an initialised process group and returns every rank's result. The
  train task uses it for MONAI Label's ``multi_gpu`` option.
* Under ``torchrun`` (several GPUs, or several machines) the process group comes
  from the environment: ``init_from_environment()`` joins it, and
  ``medseg.train_cli`` runs the same train task in every process.

``medseg.pipeline.training.train_network`` does the rest: it wraps the network in
DDP, splits the batch across ranks and validates on rank 0 only.
"""
from __future__ import annotations

import os
import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def backend_for(world_size: int) -> str:
    """NCCL when there is a GPU for every process, gloo (CPU) otherwise."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, backend: str, address: str, out_dir: str, payload: bytes):
    # Every process shares the machine's cores: without this, each would start one
    # thread per core and the processes would fight over them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if backend == "nccl":
        torch.cuda.set_device(rank)  # before unpickling, so no argument lands on GPU 0 for every rank
    fn, args = pickle.loads(payload)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world_size)
    try:
        result = fn(*args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(world_size: int, fn: Callable, *args) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` ranks; the results, ordered by rank.

    ``fn`` and ``args`` must be picklable (a module-level function; memory-mapped
    cases travel as file names, see ``PreprocessedCase.__getstate__``).
    """
    if world_size < 2:
        return [fn(*args)]
    backend = backend_for(world_size)
    address = f"tcp://127.0.0.1:{free_port()}"
    # Plain pickle, not torch.multiprocessing's: that one hands CPU tensors over as shared
    # memory, so every rank's optimizer would step the same weights (a race that left the
    # ranks' weights different). Each rank must own a copy, as with one process per GPU.
    payload = pickle.dumps((fn, args))
    with tempfile.TemporaryDirectory(prefix="medseg-ddp-") as out_dir:
        mp.spawn(_worker, args=(world_size, backend, address, out_dir, payload), nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def init_from_environment() -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group(backend_for(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return True


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
