"""How fast a network's forward pass runs against what the machine could do (a roofline).

The achieved FLOP/s of one forward pass, against the data-sheet FP16 tensor peak of a known
GPU, or on a CPU against the faster of a large matrix product and a large 3D convolution
measured on the same machine. Used by bench/suite.py.
"""
from __future__ import annotations

import functools
import time

import numpy as np

# Dense peak throughput of known GPUs (vendor data sheets, without sparsity), FLOP/s:
# (FP16/BF16 tensor core, FP32). The forward pass is timed under autocast FP16, as the
# app's inference runs it on a GPU, so the FP16 tensor peak is the roofline.
GPU_PEAKS = [
    ("H100 PCIe", 756e12, 51e12),
    ("H100 NVL", 835e12, 60e12),
    ("H200", 989e12, 67e12),
    ("H100", 989e12, 67e12),  # SXM
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
]


def gpu_peaks(name: str) -> tuple[float, float] | None:
    for key, fp16, fp32 in GPU_PEAKS:
        if key.lower() in name.lower():
            return fp16, fp32
    return None


def _best_rate(fn, flops: float, repeats: int) -> float:
    fn()  # warm-up: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best


@functools.lru_cache(maxsize=1)
def cpu_compute_ceiling(repeats: int = 5) -> dict:
    """FP32 FLOP/s of the best cases of this CPU's kernels, with torch's threads: the roofline there.

    CPUs have no data-sheet peak that holds across clocks, SIMD widths and FMA ports, so the
    ceiling is measured: the faster of a 2048x2048 matrix product (BLAS) and a 128-channel
    3x3x3 convolution on a 32^3 volume (oneDNN, the library the networks' convolutions run
    on). Both are needed: on AMD CPUs MKL's GEMM takes a slower code path than oneDNN.
    Measured once per run, so every row of a run is set against the same ceiling.
    """
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = _best_rate(lambda: a @ b, 2 * n**3, repeats)
    conv = torch.nn.Conv3d(128, 128, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 128, 32, 32, 32)
    with torch.no_grad():
        conv_rate = _best_rate(lambda: conv(x), 2 * 128 * 128 * 27 * 32**3, repeats)
    return {"gemm_tflops": round(gemm / 1e12, 3), "conv3d_tflops": round(conv_rate / 1e12, 3),
            "ceiling_tflops": round(max(gemm, conv_rate) / 1e12, 3), "ceiling_flops": max(gemm, conv_rate)}


def forward_speed(networks: list, shapes: list[tuple], device: str, batch: int = 2, repeats: int = 20) -> dict:
    """FLOPs of one forward pass of a batch (the sliding window's batch, 2) and the time it takes.

    Several networks (the cascade's two stages) are summed. On a GPU under autocast FP16
    (as inference runs), timed with CUDA events after warm-up; achieved FLOP/s against the
    GPU's FP16 tensor peak. On the CPU in FP32, against the measured compute ceiling.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    flops, seconds = 0, 0.0
    for network, shape in zip(networks, shapes):
        network = network.to(dev).eval()
        x = torch.randn(batch, *shape, device=dev)
        amp = dict(device_type=dev.type, enabled=dev.type == "cuda")
        with torch.no_grad(), torch.autocast(**amp), FlopCounterMode(display=False) as counter:
            network(x)
        flops += int(counter.get_total_flops())
        times = []
        with torch.no_grad(), torch.autocast(**amp):
            for i in range(3 + (repeats if dev.type == "cuda" else 3)):
                if dev.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    network(x)
                    end.record()
                    torch.cuda.synchronize()
                    t = start.elapsed_time(end) / 1000
                else:
                    t0 = time.perf_counter()
                    network(x)
                    t = time.perf_counter() - t0
                if i >= 3:
                    times.append(t)
        seconds += float(np.median(times))
        network.cpu()
    out = {"batch": batch, "gflops_forward": round(flops / 1e9, 2), "forward_s": round(seconds, 5),
           "achieved_tflops": round(flops / seconds / 1e12, 3), "precision": "autocast fp16" if dev.type == "cuda"
           else "fp32"}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peaks = gpu_peaks(name)
        out["gpu"] = name
        if peaks:
            out["peak_tflops_fp16_tensor"] = peaks[0] / 1e12
            out["fraction_of_peak"] = round(flops / seconds / peaks[0], 4)
        else:
            out["peak_tflops_fp16_tensor"] = None  # not in GPU_PEAKS: add its data-sheet value
    else:
        ceiling = cpu_compute_ceiling()
        out["cpu_ceiling_fp32_measured"] = ceiling
        out["fraction_of_peak"] = round(flops / seconds / ceiling["ceiling_flops"], 4)
    return out


def our_networks(name: str, ckpt: dict) -> tuple[list, list[tuple]]:
    from medseg.models import MODELS
    from medseg.pipeline.plan import Plan

    spec = MODELS[name]
    stages = [(MODELS["cascade_lowres"], ckpt["lowres"]), (spec, ckpt)] if spec.cascade else [(spec, ckpt)]
    networks, shapes = [], []
    for stage_spec, stage_ckpt in stages:
        plan = Plan.from_dict(stage_ckpt["plan"])
        networks.append(stage_spec.network(stage_ckpt))
        shapes.append((1 + plan.previous_stage_channels, *plan.patch_size_vox))
    return networks, shapes


def segresnet_network(n_classes: int):
    """The stock network of sample-apps/radiology/lib/configs/segmentation.py."""
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=1, out_channels=n_classes, init_filters=32, blocks_down=(1, 2, 2, 4),
                     blocks_up=(1, 1, 1), dropout_prob=0.2)
