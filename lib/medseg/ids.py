"""Image ids and label tags: names that come from outside and become file and folder names.

An image id names ``<studies>/<id>.nii.gz`` (or the series folder ``<studies>/<id>/``) and
``labels/versions/<id>/``; a label tag names the folder ``labels/<tag>/``. Every datastore
method that takes one checks it here first, whichever route, task or client it came from,
so no id or tag can ever mean a path: no separators, no ``..``, nothing hidden, nothing
that a file system or a URL would read differently from how it is written.

The rule is deliberately plain ASCII (letters, digits, ``.``, ``_``, ``-``; starting with a
letter, digit or ``_``; at most 128 characters): DICOM UIDs and the usual scan names fit,
and a file copied into the studies folder under another name is skipped with a message
that says how to rename it (``datastore.local``).
"""
from __future__ import annotations

import re

from medseg.errors import MedSegInputError

MAX_ID_CHARS = 128
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RULE = f"letters, digits, '.', '_' or '-', starting with a letter, digit or '_', at most {MAX_ID_CHARS} characters"

# Folder names the datastore itself uses: an image id or label tag with one of these names
# would land on (or inside) the datastore's own records.
RESERVED_IDS = frozenset({"labels"})
RESERVED_TAGS = frozenset({"versions"})


def is_valid_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_ID_CHARS and _NAME.fullmatch(name) is not None
            and not name.endswith("."))  # Windows drops trailing dots: "a." and "a" would be one file there


def _shown(name) -> str:
    text = repr(name)
    return text if len(text) <= 60 else f"{text[:57]}..."


def image_id(name, what: str = "image id") -> str:
    """``name`` if it is a valid image id; 422 otherwise."""
    is_reserved = is_valid_name(name) and name in RESERVED_IDS
    if not is_valid_name(name) or is_reserved:
        reserved = f"; {', '.join(sorted(RESERVED_IDS))} is reserved" if is_reserved else ""
        raise MedSegInputError(f"{_shown(name)} is not a valid {what}: use {RULE}{reserved}")
    return name


def label_tag(name, what: str = "label tag") -> str:
    """``name`` if it is a valid label tag; 422 otherwise. MONAI Label's tag enums count as their value."""
    name = getattr(name, "value", name)
    is_reserved = is_valid_name(name) and name in RESERVED_TAGS
    if not is_valid_name(name) or is_reserved:
        reserved = f"; {', '.join(sorted(RESERVED_TAGS))} is reserved for the label history" if is_reserved else ""
        raise MedSegInputError(f"{_shown(name)} is not a valid {what}: use {RULE}{reserved}")
    return name
