"""What a label map is, below every reader of one: its names, matched loosely, and the
integer type its values are stored in."""
from __future__ import annotations

import numpy as np


def norm_label_name(name: str) -> str:
    """A label name as segment names are matched against it (DICOM SEG, Slicer .seg.nrrd): letters
    and digits only, lower case, so "right lung", "right_lung" and "RightLung" are one name (and a
    label list can be written on a command line without spaces)."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def label_dtype(labels: dict[str, int]):
    """The integer type labels are stored in: uint8 up to 255 labels, uint16 beyond."""
    return np.uint8 if max(labels.values(), default=0) <= 255 else np.uint16
