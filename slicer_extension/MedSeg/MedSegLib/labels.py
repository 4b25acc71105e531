"""Label names, indices and colours: the one place where segment names meet label values.

The server's label maps hold the app's indices (``/info`` ``labels``: a dict name -> index, or a
list whose n-th name has index n+1, as MONAI Label numbers them). Slicer's segments are known by
name. Going through names in both directions, and sending the name -> index mapping with every
submitted label, keeps indices from drifting between client, datastore and trainer (the public
MONAI Label issues about labels collapsing came from exactly that drift).
"""
from __future__ import annotations

import colorsys
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import LabelMappingError, ProtocolError

Color = Tuple[float, float, float]

# Colours of well-known structures (Slicer's GenericAnatomyColors where it has them), so a
# structure looks the same in every study; other labels get a colour from the palette below.
KNOWN_COLORS: Dict[str, Tuple[int, int, int]] = {
    "grey_matter": (111, 184, 210),
    "gray_matter": (111, 184, 210),
    "white_matter": (250, 250, 225),
    "csf": (85, 188, 255),
    "cerebrospinal_fluid": (85, 188, 255),
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "pancreas": (249, 180, 111),
    "kidney": (185, 102, 83),
    "left_kidney": (185, 102, 83),
    "right_kidney": (185, 102, 83),
    "stomach": (216, 132, 105),
    "gallbladder": (139, 150, 98),
    "lung": (197, 165, 145),
    "heart": (206, 110, 84),
    "aorta": (224, 97, 76),
    "bone": (241, 214, 145),
    "tumor": (144, 238, 144),
    "tumour": (144, 238, 144),
    "lesion": (144, 238, 144),
}

BACKGROUND_NAMES = {"background", "_background_", "bg"}


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def palette_color(index: int) -> Color:
    """A distinct colour per index: golden-angle hue steps, so neighbours differ strongly."""
    hue = (index * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.65, 0.95)


class LabelSet:
    """The app's labels: name <-> index, in index order, without background (index 0)."""

    def __init__(self, mapping: Mapping[str, int]):
        entries = []
        for name, idx in mapping.items():
            try:
                idx = int(idx)
            except (TypeError, ValueError):
                raise ProtocolError(f"label {name!r} has a non-integer index {idx!r}") from None
            if idx == 0 or _key(str(name)) in BACKGROUND_NAMES:
                continue  # background is implicit: value 0, no segment
            if idx < 0:
                raise ProtocolError(f"label {name!r} has a negative index {idx}")
            entries.append((str(name), idx))
        entries.sort(key=lambda e: e[1])
        indices = [idx for _, idx in entries]
        if len(set(indices)) != len(indices):
            raise ProtocolError(f"two labels share an index: {dict(entries)}")
        self._by_name = dict(entries)
        self._by_index = {idx: name for name, idx in entries}

    @classmethod
    def from_info(cls, labels) -> "LabelSet":
        """From ``/info`` ``labels`` (or a model's): a dict name -> index or a list of names."""
        if isinstance(labels, Mapping):
            return cls(labels)
        if isinstance(labels, (list, tuple)):
            names = [str(n) for n in labels if _key(str(n)) not in BACKGROUND_NAMES]
            return cls({name: i + 1 for i, name in enumerate(names)})
        if labels is None:
            return cls({})
        raise ProtocolError(f"labels must be a dict or a list, got {type(labels).__name__}")

    @property
    def names(self) -> List[str]:
        return list(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self._by_name.items())

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelSet) and self._by_name == other._by_name

    def __repr__(self) -> str:
        return f"LabelSet({self._by_name})"

    def to_dict(self) -> Dict[str, int]:
        return dict(self._by_name)

    def index_of(self, name: str) -> int:
        if name not in self._by_name:
            raise LabelMappingError(
                f"segment {name!r} is not a label of this app; rename it to one of {self.names} or delete it")
        return self._by_name[name]

    def name_of(self, index: int) -> str:
        if int(index) not in self._by_index:
            raise LabelMappingError(f"label value {index} is not a label of this app ({self.describe()})")
        return self._by_index[int(index)]

    def color_of(self, name: str) -> Color:
        """RGB in 0..1 (Slicer's segment colours)."""
        known = KNOWN_COLORS.get(_key(name))
        if known is not None:
            return tuple(c / 255.0 for c in known)
        return palette_color(self._by_name.get(name, len(self._by_name) + 1))

    def describe(self) -> str:
        return ", ".join(f"{name}={idx}" for name, idx in self._by_name.items()) or "no labels"

    def label_info(self, names: Optional[Iterable[str]] = None) -> List[dict]:
        """``label_info`` for ``PUT /datastore/label`` params: what each value of the file means.

        Same layout as MONAI Label's Slicer module sends (name, idx); the values are the app's
        own indices, so a server that ignores ``label_info`` still reads the file right.
        """
        selected = self.names if names is None else [n for n in self.names if n in set(names)]
        return [{"name": name, "idx": self._by_name[name]} for name in selected]

    def max_entropy_nats(self) -> float:
        """Upper end of the voxel entropy of a softmax over background and every label."""
        return float(np.log(len(self) + 1)) if len(self) else 1.0


def compose_label_array(masks: Sequence[Tuple[str, np.ndarray]], labels: LabelSet) -> np.ndarray:
    """One label map (app indices) from named binary masks on the same grid.

    Where segments overlap, the later one in ``masks`` wins, as in Slicer's own export.
    Unknown segment names are refused, so nothing is silently dropped or renumbered.
    """
    check_segment_names([name for name, _ in masks], labels)
    shape = masks[0][1].shape
    out = np.zeros(shape, dtype=np.uint8 if max(labels.to_dict().values(), default=0) < 256 else np.uint16)
    for name, mask in masks:
        if mask.shape != shape:
            raise LabelMappingError(f"segment {name!r} has shape {mask.shape}, the others {shape}")
        out[np.asarray(mask) != 0] = labels.index_of(name)
    return out


def masks_from_label_array(array: np.ndarray, labels: LabelSet) -> List[Tuple[str, np.ndarray]]:
    """Binary masks (uint8) per label, in index order; labels absent from the array give empty masks."""
    unknown = sorted(set(int(v) for v in np.unique(array)) - {0} - set(labels.to_dict().values()))
    if unknown:
        raise LabelMappingError(f"the label map holds values {unknown} that are not labels ({labels.describe()})")
    return [(name, (array == idx).astype(np.uint8)) for name, idx in labels]


def present_labels(array: np.ndarray, labels: LabelSet) -> List[str]:
    values = set(values_present(array))
    return [name for name, idx in labels if idx in values]


# ---------------------------------------------------------------- Slicer's one-pass import and export
# With many labels, one full-size mask per label (a 100-label 512x512x600 CT: about 16 GB) is
# what a module must not make. Slicer converts a whole label map in one pass when it is given a
# colour table (export: segment name -> value) or a segment ID per value (import); these build them.

def color_table_rows(labels: LabelSet) -> List[Tuple[int, str, Color]]:
    """(value, name, RGB 0..1) per label: the rows of the colour table that maps names to values."""
    return [(idx, name, labels.color_of(name)) for name, idx in labels]


def number_of_colors(labels: LabelSet) -> int:
    """The size of a colour table whose rows are indexed by label value (0 = background)."""
    return max(labels.to_dict().values(), default=0) + 1


def segment_ids_by_value(labels: LabelSet, segment_id_of: Mapping[str, str]) -> List[str]:
    """For Slicer's import: the segment ID that label value v fills, at position v - 1 ('' = none)."""
    out = [""] * (number_of_colors(labels) - 1)
    for name, idx in labels:
        out[idx - 1] = segment_id_of[name]
    return out


def check_segment_names(names: Sequence[str], labels: LabelSet) -> None:
    """Every segment must be a label of the app: an unknown name is refused, never renumbered or dropped."""
    if not names:
        raise LabelMappingError("there are no segments to submit")
    unknown = [name for name in names if name not in labels]
    if unknown:
        raise LabelMappingError(
            f"segments {unknown} are not labels of this app ({labels.describe()}); rename or delete them")


def values_present(array: np.ndarray) -> List[int]:
    """The values in a label map, without a sorted copy of it (bincount on small integer types)."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 2 and (flat.size == 0 or flat.min() >= 0):
        return [int(v) for v in np.flatnonzero(np.bincount(flat))]
    return sorted(int(v) for v in np.unique(flat))


def check_label_values(array: np.ndarray, labels: LabelSet) -> List[str]:
    """The labels present in a server label map; values that are no label are refused."""
    values = set(values_present(array))
    unknown = sorted(values - {0} - set(labels.to_dict().values()))
    if unknown:
        raise LabelMappingError(f"the label map holds values {unknown} that are not labels ({labels.describe()})")
    return [name for name, idx in labels if idx in values]
