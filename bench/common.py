"""Shared helpers of the benchmark scripts: machine description and README tables."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path


def machine_info() -> dict:
    import monai
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


def start_run(work: Path) -> tuple[dict, Path]:
    """(machine description with the load before the run, an empty studies folder under ``work``)."""
    import shutil

    info = machine_info()
    info["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(work, ignore_errors=True)
    studies = Path(work) / "studies"
    studies.mkdir(parents=True)
    return info, studies


def update_readme_table(readme: Path, key: str, header: list[str], rows: list[list[str]], caption: str) -> None:
    """Replace the block between <!-- key:start --> and <!-- key:end --> with a generated table."""
    from medseg.docs_tables import markdown_table, replace_block

    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    readme.write_text(replace_block(text, key, caption + "\n\n" + markdown_table(header, rows)))


def resample_isotropic_arrays(image, label, affine, spacing_mm: float):
    """(image, label, affine) on an isotropic ``spacing_mm`` grid over the same field of view: the
    image by linear interpolation, the label by nearest neighbour."""
    import numpy as np
    from scipy import ndimage

    step = spacing_mm / np.linalg.norm(affine[:3, :3], axis=0)  # output voxel -> input voxel, per axis
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(image.shape, step))
    affine = affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag(step)
    image = ndimage.affine_transform(np.asarray(image, np.float32), step, output_shape=shape, order=1)
    label = ndimage.affine_transform(np.asarray(label, np.uint8), step, output_shape=shape, order=0)
    return image, label, affine
