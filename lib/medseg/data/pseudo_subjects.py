"""Reproducible pseudo-subjects made from the bundled MNI template.

Each subject is the template seen through a random, smooth, invertible-looking
spatial transform (small affine + B-spline-like displacement field), resampled on
a grid of its own spacing, with MR artefacts on top: a multiplicative bias field,
a contrast (gamma) change, a global intensity scale, optional thick-slice blur and
Rician noise. The label map goes through exactly the same transform (linear
interpolation of its one-hot maps, then argmax), so image and label stay aligned.

Two kinds of subject:
* ``brain``: brain-extracted like the template, zero outside the brain;
* ``head``: as a scanner delivers it. A synthetic head (``synthetic_head``: skull,
  scalp, neck, face, each tissue with a random contrast) surrounds the brain, the
  Rician noise covers the whole field of view, the background may carry an offset,
  the field of view cuts the neck at a random level, one axis may be acquired with
  thick (3-5 mm) slices, and the array may be stored in another orientation
  (LPS, LIA, PIL, ...), with the affine saying so.

Everything is driven by ``numpy.random.default_rng(seed)`` so a (seed, index)
pair always gives the same subject on any machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data.synthetic_head import add_head, pad_for_head
from medseg.data.template import TISSUE_LABELS, load_template


@dataclass
class SubjectParams:
    spacing_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    scale: float
    displacement_mm: float
    bias_strength: float
    gamma: float
    intensity_scale: float
    noise_fraction: float
    thick_slice_axis: int  # -1: none
    kind: str = "brain"  # "brain" (extracted, zero background) or "head" (see the module doc)
    background_offset: float = 0.0  # head: constant added everywhere, as a fraction of the tissue peak
    neck_cut_mm: float = 0.0  # head: how much of the synthetic neck the field of view leaves out
    axcodes: str = "RAS"  # head: the orientation the array is stored in


# What a (seed, index) pair makes; bump it when that changes, so that cached subjects are made
# again. 2: labels bounded by the template's extracted brain, temporal muscles in the heads.
GENERATOR_VERSION = 2

# Orientations a head may be stored in: RAS (NIfTI from most converters), LPS (DICOM
# patient axes), sagittal and coronal acquisitions.
HEAD_AXCODES = ("RAS", "RAS", "LPS", "LIA", "PIL", "ASL", "RPI")


def draw_head_params(rng: np.random.Generator, params: SubjectParams) -> SubjectParams:
    """The brain parameters plus what a head scan varies in: noise everywhere, FOV, slices, orientation."""
    spacing = list(params.spacing_mm)
    thick = params.thick_slice_axis
    if rng.random() < 0.3:  # a thick-slice acquisition: 1 mm in-plane, 3-5 mm slices
        thick = int(rng.integers(0, 3))
        spacing = [float(rng.uniform(0.9, 1.3))] * 3
        spacing[thick] = float(rng.uniform(3.0, 5.0))
    return SubjectParams(**{
        **asdict(params), "spacing_mm": tuple(spacing), "thick_slice_axis": thick, "kind": "head",
        "noise_fraction": float(rng.uniform(0.01, 0.06)),
        "background_offset": float(rng.uniform(0.0, 0.05)) if rng.random() < 0.3 else 0.0,
        "neck_cut_mm": float(rng.uniform(0, 60)),
        "axcodes": str(rng.choice(HEAD_AXCODES)),
    })


def draw_params(rng: np.random.Generator, spacing_choices_mm=(1.2, 1.5, 1.5, 1.8)) -> SubjectParams:
    spacing = float(rng.choice(spacing_choices_mm))
    return SubjectParams(
        spacing_mm=(spacing, spacing, spacing),
        rotation_deg=tuple(float(x) for x in rng.uniform(-8, 8, 3)),
        scale=float(rng.uniform(0.92, 1.08)),
        displacement_mm=float(rng.uniform(1.0, 3.0)),
        bias_strength=float(rng.uniform(0.05, 0.25)),
        gamma=float(rng.uniform(0.75, 1.35)),
        intensity_scale=float(rng.uniform(0.5, 2.0)),
        noise_fraction=float(rng.uniform(0.01, 0.04)),
        thick_slice_axis=int(rng.choice([-1, -1, 0, 1, 2])),
    )


def _rotation_matrix(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, shape, control_points: int = 5) -> np.ndarray:
    """A smooth random field of unit standard deviation: a coarse Gaussian grid
    upsampled with cubic splines (the classic B-spline deformation model)."""
    coarse = rng.standard_normal((control_points,) * 3)
    zoom = [s / control_points for s in shape]
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest")
    field = field[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - f) for s, f in zip(shape, field.shape)]
    return np.pad(field, pad, mode="edge")


def sample_coordinates(params: SubjectParams, template_shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """Template voxel coordinates for every output voxel, and the output voxel->template voxel matrix.

    The output grid covers the template's field of view at the subject's spacing.
    """
    spacing = np.asarray(params.spacing_mm)
    out_shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(template_shape, spacing))
    center_t = (np.asarray(template_shape) - 1) / 2.0
    linear = _rotation_matrix(params.rotation_deg) * params.scale
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in out_shape], indexing="ij"))
    # Output voxel -> template millimetres (template is 1 mm) centred on the template.
    mm = grid * spacing.reshape(3, 1, 1, 1).astype(np.float32)
    mm -= (center_t.reshape(3, 1, 1, 1)).astype(np.float32)
    coords = np.einsum("ij,j...->i...", linear.astype(np.float32), mm)
    coords += center_t.reshape(3, 1, 1, 1).astype(np.float32)
    for axis in range(3):
        coords[axis] += params.displacement_mm * smooth_field(rng, out_shape).astype(np.float32)
    return coords, out_shape


def make_subject(image_t: np.ndarray, labels_t: np.ndarray, affine_t: np.ndarray, seed: int, index: int,
                 kind: str = "brain"):
    """One pseudo-subject: (image float32, labels uint8, affine, params)."""
    rng = np.random.default_rng([seed, index])
    params = draw_params(rng)
    if kind == "head":
        params = draw_head_params(rng, params)
        image_t, labels_t, affine_t = pad_for_head(image_t, labels_t, affine_t)
        white_matter = float(np.median(image_t[labels_t == TISSUE_LABELS["white_matter"]]))
        image_t = add_head(image_t, rng, white_matter)
    elif kind != "brain":
        raise ValueError(f"unknown subject kind {kind!r}")
    coords, out_shape = sample_coordinates(params, image_t.shape, rng)

    source = image_t
    if params.thick_slice_axis >= 0:
        # Simulated thick slices: blur along one axis as a 2-3x slice thickness would.
        sigma = [0.0, 0.0, 0.0]
        sigma[params.thick_slice_axis] = 1.2 * params.spacing_mm[params.thick_slice_axis]
        source = ndimage.gaussian_filter(image_t, sigma)
    image = ndimage.map_coordinates(source, coords, order=3, mode="constant", cval=0.0, prefilter=True)
    image = np.clip(image, 0, None)
    # A brain subject stays brain-extracted (zero outside the brain).
    brain = image > 1e-3 * float(image.max())

    n_classes = max(TISSUE_LABELS.values()) + 1
    onehot = np.stack(
        [
            ndimage.map_coordinates((labels_t == c).astype(np.float32), coords, order=1, mode="constant", cval=float(c == 0))
            for c in range(n_classes)
        ]
    )
    labels = np.argmax(onehot, axis=0).astype(np.uint8)

    peak = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
    image = image / peak
    bias = np.exp(params.bias_strength * smooth_field(rng, out_shape, control_points=3))
    image = np.power(np.clip(image, 0, None), params.gamma) * bias
    sigma_noise = params.noise_fraction
    n1 = rng.normal(0, sigma_noise, out_shape)
    n2 = rng.normal(0, sigma_noise, out_shape)
    image = np.sqrt((image + n1) ** 2 + n2**2)  # Rician noise, as in magnitude MR images
    if params.kind == "head":  # noise everywhere, as a magnitude image has it
        image = ((image + params.background_offset) * 1000.0 * params.intensity_scale).astype(np.float32)
    else:
        image = np.where(brain, image * 1000.0 * params.intensity_scale, 0.0).astype(np.float32)

    affine = affine_t.copy()
    affine[:3, :3] = affine_t[:3, :3] @ np.diag(params.spacing_mm)
    if params.kind == "head":
        image, labels, affine = _cut_neck(image, labels, affine, params)
        image, labels, affine = _store_as(image, labels, affine, params.axcodes)
    return image, labels, affine, params


def _cut_neck(image, labels, affine, params: SubjectParams):
    """The field of view starts ``neck_cut_mm`` above the bottom of the synthetic neck."""
    cut = int(params.neck_cut_mm / params.spacing_mm[2])
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 2] * cut
    return image[:, :, cut:], labels[:, :, cut:], shifted


def _store_as(image, labels, affine, axcodes: str):
    """The arrays permuted and flipped to ``axcodes``, and the affine that keeps them in place."""
    import nibabel as nib

    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt(tuple(axcodes)))
    affine = affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, transform))
    labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, transform))
    return image, labels, affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype) -> None:
    """Write atomically: a reader never sees a half-written file."""
    import nibabel as nib

    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def _write_subject(out_dir: Path, name: str, seed: int, index: int, template=None, kind: str = "brain") -> dict:
    template = template if template is not None else load_template()
    image, labels, affine, params = make_subject(*template, seed=seed, index=index, kind=kind)
    write_nifti(out_dir / "labels" / f"{name}.nii.gz", labels, affine, np.uint8)
    write_nifti(out_dir / "images" / f"{name}.nii.gz", image, affine, np.float32)
    return {"name": name, "seed": seed, "index": index, **asdict(params)}


def generate(out_dir: Path, n: int, seed: int = 0, first_index: int = 0, prefix: str = "subject",
             workers: int | None = None, kind: str = "brain") -> list[dict]:
    """Write n subjects as ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz``; skip existing ones.

    Missing subjects are made in parallel processes (one per core by default); each
    subject depends only on (seed, index), so the result does not depend on the order.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    # Files an older generator made are not this (seed, index) any more: make them again.
    stamp = out_dir / f".generator-{prefix}-{kind}.json"
    current = stamp.exists() and json.loads(stamp.read_text()).get("version") == GENERATOR_VERSION
    if not current:
        for old in [*out_dir.glob(f"images/{prefix}_*.nii.gz"), *out_dir.glob(f"labels/{prefix}_*.nii.gz")]:
            old.unlink()
    records, missing = {}, []
    for index in range(first_index, first_index + n):
        name = f"{prefix}_{index:03d}"
        if current and (out_dir / "images" / f"{name}.nii.gz").exists() and (out_dir / "labels" / f"{name}.nii.gz").exists():
            records[index] = {"name": name, "seed": seed, "index": index}
        else:
            missing.append((name, index))
    workers = min(len(missing), workers or os.cpu_count() or 1)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            futures = {index: pool.submit(_write_subject, out_dir, name, seed, index, None, kind)
                       for name, index in missing}
            records.update({index: f.result() for index, f in futures.items()})
    elif missing:
        template = load_template()
        for name, index in missing:
            records[index] = _write_subject(out_dir, name, seed, index, template, kind)
    if not current:
        stamp.write_text(json.dumps({"version": GENERATOR_VERSION}))
    return [records[i] for i in sorted(records)]


def prepare_studies(studies_dir: Path, n: int, seed: int, cache_dir: Path, prefix: str = "subject") -> list[str]:
    """A MONAI Label studies folder with n unlabeled pseudo-subjects (ground truth stays in the cache).

    Existing images are left alone, so a folder a user has worked in keeps its labels.
    """
    studies_dir = Path(studies_dir)
    studies_dir.mkdir(parents=True, exist_ok=True)
    records = generate(cache_dir, n, seed=seed, prefix=prefix)
    names = []
    for r in records:
        dest = studies_dir / f"{r['name']}.nii.gz"
        if not dest.exists():
            tmp = studies_dir / f".{r['name']}.tmp"
            shutil.copyfile(Path(cache_dir) / "images" / f"{r['name']}.nii.gz", tmp)
            os.replace(tmp, dest)
        names.append(r["name"])
    return names


# Seeds of the fixed sample sets: the shipped weights train on SEED_TRAIN and are
# tested on SEED_HELDOUT; the studies folder users start with uses SEED_STUDIES.
SEED_TRAIN, SEED_HELDOUT, SEED_STUDIES = 0, 1000, 2000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate pseudo-subjects from the bundled MNI template.")
    parser.add_argument("--out", required=True, help="output folder (gets images/ and labels/)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--prefix", default="subject")
    parser.add_argument("--kind", default="brain", choices=("brain", "head"),
                        help="brain: extracted, zero background; head: skull, neck, noise everywhere")
    parser.add_argument("--studies", default=None,
                        help="also copy the images (unlabeled) into this MONAI Label studies folder")
    args = parser.parse_args(argv)
    if args.studies:
        names = prepare_studies(Path(args.studies), args.n, args.seed, Path(args.out), args.prefix)
        print(f"studies folder {args.studies}: {len(names)} unlabeled images")
        return
    records = generate(Path(args.out), args.n, args.seed, args.first_index, args.prefix, kind=args.kind)
    print(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
