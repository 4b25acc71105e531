"""NRRD volumes and Slicer's ``.seg.nrrd`` segmentations, read as checked ``Volume``s.

3D Slicer saves volumes as ``.nrrd`` and segmentations as ``.seg.nrrd``: a NRRD
whose header names each segment (``SegmentN_Name``, ``SegmentN_LabelValue``,
``SegmentN_Layer``) and whose voxels hold label values, one 3D layer per group of
non-overlapping segments. A segmentation may also cover only part of its
reference image (Slicer crops it to the segments' extent).

Files from outside are hostile, so this reader is strict:
* only attached data (a detached ``data file`` could name any file on the server);
* raw or gzip encoding, decompressed with a bound of the size the header declares,
  so a small file cannot inflate past it (the header sizes pass ``GridLimits``
  first, before any data is read);
* the geometry must be a space NRRD in LPS or RAS, with finite directions.

NRRD's ``space directions`` and ``space origin`` are in the header's space (usually
LPS, as in DICOM); the affine returned is RAS, like a NIfTI's.
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from medseg.errors import MedSegInputError
from medseg.label_map import label_dtype, norm_label_name
from medseg.volume import LIMITS, Volume

NRRD_SUFFIX = ".nrrd"
SEG_NRRD_SUFFIX = ".seg.nrrd"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SPACES = {"left-posterior-superior": _LPS_TO_RAS, "lps": _LPS_TO_RAS,
           "right-anterior-superior": np.eye(3), "ras": np.eye(3)}


def is_nrrd(path: str) -> bool:
    return str(path).lower().endswith(NRRD_SUFFIX)


def is_segmentation(path: str, header: dict | None = None) -> bool:
    """A Slicer segmentation: named ``.seg.nrrd``, or a NRRD whose header lists segments."""
    if str(path).lower().endswith(SEG_NRRD_SUFFIX):
        return True
    return header is not None and "Segment0_LabelValue" in header


def read_header(path: str, what: str) -> tuple[dict, int]:
    """The NRRD header and the byte offset where its data starts."""
    import nrrd

    try:
        with open(path, "rb") as f:
            header = nrrd.read_header(f)
            offset = f.tell()
    except Exception as e:  # pynrrd raises several types for malformed headers
        raise MedSegInputError(f"cannot read {what} as a NRRD file: {e}") from e
    if "data file" in header or "datafile" in header:
        raise MedSegInputError(f"{what} is a detached NRRD header; send a .nrrd with its data attached")
    return header, offset


def _spatial_axes(header: dict, what: str) -> list[int]:
    kinds = header.get("kinds") or ["domain"] * int(header["dimension"])
    axes = [i for i, k in enumerate(kinds) if str(k).lower() in ("domain", "space")]
    if len(axes) != 3:
        raise MedSegInputError(f"{what} has {len(axes)} spatial axes; a 3D volume is required")
    return axes


def header_shape(header: dict, what: str) -> tuple[int, ...]:
    """The 3D grid size the header declares (a segmentation's layer axis left out)."""
    sizes = [int(n) for n in header["sizes"]]
    return tuple(sizes[a] for a in _spatial_axes(header, what))


def header_affine(header: dict, what: str) -> np.ndarray:
    """Voxel -> RAS millimetre matrix from ``space``, ``space directions`` and ``space origin``."""
    space = str(header.get("space", "")).lower()
    if space not in _SPACES:
        raise MedSegInputError(f"{what} has NRRD space {header.get('space')!r}; LPS or RAS is required")
    directions = header.get("space directions")
    axes = _spatial_axes(header, what)
    try:
        columns = np.array([np.asarray(directions[a], dtype=float) for a in axes]).T
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    except (TypeError, ValueError, IndexError) as e:
        raise MedSegInputError(f"{what} has no usable space directions: {e}") from e
    if columns.shape != (3, 3) or origin.shape != (3,) or not np.all(np.isfinite(columns)) \
            or not np.all(np.isfinite(origin)):
        raise MedSegInputError(f"{what} has no usable space directions or origin")
    affine = np.eye(4)
    affine[:3, :3] = _SPACES[space] @ columns
    affine[:3, 3] = _SPACES[space] @ origin
    return affine


def read_data(path: str, header: dict, offset: int, what: str) -> np.ndarray:
    """The voxels, in the header's axis order, never inflating past the declared size."""
    import nrrd

    try:
        dtype = nrrd.reader._determine_datatype(header)
    except Exception as e:
        raise MedSegInputError(f"{what} has an unsupported NRRD type {header.get('type')!r}") from e
    sizes = [int(n) for n in header["sizes"]]
    expected = int(np.prod(sizes)) * dtype.itemsize
    encoding = str(header.get("encoding", "raw")).lower()
    with open(path, "rb") as f:
        f.seek(offset)
        if encoding == "raw":
            raw = f.read(expected + 1)
        elif encoding in ("gzip", "gz"):
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
            raw = bytearray()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                raw += inflater.decompress(chunk, expected + 1 - len(raw))
                if len(raw) > expected or inflater.unconsumed_tail:
                    raise MedSegInputError(f"{what} holds more data than its header declares")
        else:
            raise MedSegInputError(f"{what} uses NRRD encoding {encoding!r}; raw or gzip is required")
    if len(raw) != expected:
        raise MedSegInputError(f"{what} holds {len(raw)} bytes of data; its header declares {expected}")
    # NRRD lists the fastest axis first, which is Fortran order for numpy.
    return np.frombuffer(raw, dtype=dtype).reshape(sizes, order="F")


def read_nrrd(path: str, what: str | None = None, limits=None):
    """A NRRD volume (or a segmentation's label values, layers merged) as a RAS ``Volume``."""

    what = what or os.path.basename(path)
    limits = limits or LIMITS
    header, offset = read_header(path, what)
    shape = header_shape(header, what)
    limits.check_size(shape, what)
    affine = header_affine(header, what)
    limits.check(shape, affine, what)
    data = read_data(path, header, offset, what)
    if is_segmentation(path, header):
        array = merge_layers(data, header, what)
    else:
        if data.ndim != 3:
            raise MedSegInputError(f"{what} has shape {list(data.shape)}; a 3D volume is required")
        array = data.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise MedSegInputError(f"{what} contains NaN or infinite values")
    return Volume(array=array, affine=affine, header=None)


def segments(header: dict) -> list[dict]:
    """The segments a ``.seg.nrrd`` header lists: name, label value and layer."""
    out = []
    i = 0
    while f"Segment{i}_LabelValue" in header:
        out.append({"name": str(header.get(f"Segment{i}_Name", f"Segment_{i + 1}")),
                    "value": int(header[f"Segment{i}_LabelValue"]),
                    "layer": int(header.get(f"Segment{i}_Layer", 0))})
        i += 1
    return out


def _layers(data: np.ndarray, header: dict, what: str) -> np.ndarray:
    """A segmentation's voxels as (layer, *spatial): one layer when the file is 3D."""
    if data.ndim == 3:
        return data[None]
    spatial = _spatial_axes(header, what)
    return np.moveaxis(data, [a for a in range(data.ndim) if a not in spatial][0], 0)


def merge_layers(data: np.ndarray, header: dict, what: str) -> np.ndarray:
    """One label map (the file's own values) from a segmentation's layers; later segments win."""
    if data.ndim == 3:
        return data.astype(np.int32)
    layers = _layers(data, header, what)
    merged = np.zeros(layers.shape[1:], dtype=np.int32)
    for seg in segments(header):
        merged[layers[seg["layer"]] == seg["value"]] = seg["value"]
    return merged


def read_segmentation_as_label(path: str, app_labels: dict[str, int], reference, what: str, limits=None):
    """A ``.seg.nrrd`` as a label ``Volume`` on ``reference``'s grid, values set by segment name.

    The file's own label values are ignored: each segment takes the app's index of the
    label with its name (so Slicer's segment order does not matter), matched as
    ``medseg.label_map.norm_label_name`` does (``right_lung`` is "right lung"). A segment whose
    name is not one of the app's labels is refused, naming them. A segmentation that
    covers part of its image (Slicer's cropped extent, same spacing and directions) is
    put in place on the full grid.
    """
    from medseg.volume import LIMITS, Volume

    limits = limits or LIMITS
    header, offset = read_header(path, what)
    shape = header_shape(header, what)
    limits.check_size(shape, what)
    affine = header_affine(header, what)
    listed = segments(header)
    if not listed:
        raise MedSegInputError(f"{what} lists no segments (SegmentN_Name / SegmentN_LabelValue)")

    by_key = {norm_label_name(name): index for name, index in app_labels.items()}
    unknown = sorted({s["name"] for s in listed if norm_label_name(s["name"]) not in by_key})
    if unknown:
        raise MedSegInputError(f"segments {unknown} of {what} are not labels of this app; its labels are "
                               f"{sorted(app_labels)} (rename the segments, or start the server with them "
                               "in --conf labels)")
    layers = _layers(read_data(path, header, offset, what), header, what)
    label = np.zeros(shape, dtype=label_dtype(app_labels))
    for seg in listed:
        if not 0 <= seg["layer"] < layers.shape[0]:
            raise MedSegInputError(f"segment {seg['name']!r} of {what} names layer {seg['layer']}, which is not there")
        label[layers[seg["layer"]] == seg["value"]] = by_key[norm_label_name(seg["name"])]
    return Volume(array=_on_reference_grid(label, affine, reference, what), affine=reference.affine.copy(),
                  header=None)


def _on_reference_grid(label: np.ndarray, affine: np.ndarray, reference, what: str,
                       tol_mm: float = 1e-2) -> np.ndarray:
    if label.shape == reference.shape and np.allclose(affine, reference.affine, atol=tol_mm):
        return label
    mismatch = MedSegInputError(f"{what} is not on its image's grid (or a part of it with the same spacing and "
                                "directions); export the segmentation with the image as its reference")
    if not np.allclose(affine[:3, :3], reference.affine[:3, :3], atol=1e-4):
        raise mismatch
    start = np.linalg.solve(reference.affine[:3, :3], affine[:3, 3] - reference.affine[:3, 3])
    if not np.allclose(start, np.round(start), atol=1e-2):
        raise mismatch
    start = np.round(start).astype(int)
    stop = start + np.asarray(label.shape)
    if np.any(start < 0) or np.any(stop > np.asarray(reference.shape)):
        raise mismatch
    full = np.zeros(reference.shape, dtype=label.dtype)
    full[tuple(slice(a, b) for a, b in zip(start, stop))] = label
    return full
