"""Peak memory and GPU activity of a process tree, sampled while a benchmark step runs.

The servers and peers run in their own processes (MONAI Label trains in a child of the
server; nnU-Net augments data in worker processes), so memory is measured on the whole
tree below a pid, from outside, the same way for every model and peer:

* RAM: the sum of the resident set sizes of the process and all its descendants, its
  peak over the samples (shared pages count once per process, so this is an upper bound
  of what the tree holds; it is the number ``top`` users would add up);
* GPU memory: what the driver reports for the tree's pids (``nvidia-smi
  --query-compute-apps``: CUDA context and PyTorch's caching allocator included); where
  the driver does not show them (pid namespaces in containers) the device's used memory
  above what it was when sampling started;
* GPU busy: ``utilization.gpu``, the fraction of the last sample period in which a kernel
  ran, averaged over the samples, and the share of samples at 90% or more.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import psutil


def _gpu_index() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible if visible.isdigit() else "0"


def _smi(args: list[str]) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=10).stdout
    return [[x.strip() for x in line.split(",")] for line in out.strip().splitlines() if line.strip()]


class ProcessTreeMonitor:
    """``with ProcessTreeMonitor(pid, gpu=True) as m: ...`` then ``m.result()``."""

    def __init__(self, pid: int, gpu: bool = False, interval_s: float = 0.25):
        self.root = psutil.Process(pid)
        self.gpu = gpu and shutil.which("nvidia-smi") is not None
        self.interval_s = interval_s
        self.peak_rss = 0
        self.peak_gpu_tree = 0.0
        self.peak_gpu_device = 0.0
        self.gpu_util: list[tuple[float, float]] = []  # (wall-clock time, utilization %)
        self.baseline_gpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.seconds = 0.0

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        procs = self._tree()
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.peak_rss = max(self.peak_rss, rss)
        if self.gpu:
            pids = {str(p.pid) for p in procs}
            try:
                apps = _smi(["--query-compute-apps=pid,used_memory"])
                self.peak_gpu_tree = max(self.peak_gpu_tree, sum(float(m) for pid, m in apps if pid in pids
                                                                 and m.replace(".", "").isdigit()))
                util, used = _smi(["-i", _gpu_index(), "--query-gpu=utilization.gpu,memory.used"])[0]
                self.gpu_util.append((time.time(), float(util)))
                self.peak_gpu_device = max(self.peak_gpu_device, float(used) - self.baseline_gpu)
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ProcessTreeMonitor":
        if self.gpu:
            try:
                self.baseline_gpu = float(_smi(["-i", _gpu_index(), "--query-gpu=memory.used"])[0][0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                self.gpu = False
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._t0

    def result(self) -> dict:
        out = {"peak_rss_mb": round(self.peak_rss / 2**20)}
        if self.gpu:
            tree = self.peak_gpu_tree
            out["peak_gpu_mb"] = round(tree if tree > 0 else self.peak_gpu_device)
            out["peak_gpu_mb_source"] = "process tree (nvidia-smi)" if tree > 0 else "device used above baseline"
            out.update(self._busy([u for _, u in self.gpu_util]))
        return out

    @staticmethod
    def _busy(utils: list[float]) -> dict:
        if not utils:
            return {}
        return {"gpu_util_mean_pct": round(sum(utils) / len(utils), 1),
                "gpu_busy_ge90_fraction": round(sum(u >= 90 for u in utils) / len(utils), 3),
                "gpu_util_samples": len(utils)}

    def busy_between(self, t0: float, t1: float) -> dict:
        """GPU busy over a wall-clock window (``time.time()``), e.g. the training loop alone
        without start-up and final validation; keys prefixed ``loop_``."""
        return {f"loop_{k}": v for k, v in self._busy([u for t, u in self.gpu_util if t0 <= t <= t1]).items()}
