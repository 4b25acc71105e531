"""The answer of each open edit, kept between clicks, so that the next click starts from it.

MONAI Label's clients send every click of an edit with each request, and no edit id. The
server recognises a continued edit by its clicks: when a request holds all the clicks of a
remembered answer on the same image, label and weights, plus new ones, that answer is the
object before the new clicks (nnInteractive's previous segmentation), and only the new
clicks need work. Anything else starts from the request's own prior. Answers are kept
bit-packed, least recently used out, so a 512x512x300 CT's answer costs 10 MB.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

MAX_EDITS = 16


def _points(array) -> frozenset:
    return frozenset(map(tuple, np.asarray(array, int).reshape(-1, 3).tolist()))


@dataclass
class Continued:
    previous: np.ndarray  # the object after the remembered request
    new_vox: np.ndarray  # (n, 3) the clicks that came since


class EditSessions:
    def __init__(self, max_edits: int = MAX_EDITS):
        self.max_edits = max_edits
        self._edits: OrderedDict[tuple, tuple[frozenset, frozenset, bytes, tuple]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(image_key, label, weights, box) -> tuple:
        box = None if box is None else tuple(map(tuple, np.asarray(box, int).tolist()))
        return image_key, label, weights, box

    def find(self, image_key, label, weights, box, foreground_vox, background_vox) -> Continued | None:
        """The remembered answer this request continues, if any (the one with most clicks)."""
        key = self._key(image_key, label, weights, box)
        fg, bg = _points(foreground_vox), _points(background_vox)
        best = None
        with self._lock:
            for (k, n), (old_fg, old_bg, packed, shape) in self._edits.items():
                if k == key and old_fg <= fg and old_bg <= bg and (old_fg | old_bg) != (fg | bg):
                    if best is None or len(old_fg) + len(old_bg) > best[0]:
                        best = (len(old_fg) + len(old_bg), old_fg, old_bg, packed, shape)
        if best is None:
            return None
        _, old_fg, old_bg, packed, shape = best
        previous = np.unpackbits(np.frombuffer(packed, np.uint8), count=int(np.prod(shape))).reshape(shape).astype(bool)
        new = sorted((fg - old_fg) | (bg - old_bg))
        return Continued(previous, np.array(new, np.int64).reshape(-1, 3))

    def remember(self, image_key, label, weights, box, foreground_vox, background_vox, mask: np.ndarray) -> None:
        fg, bg = _points(foreground_vox), _points(background_vox)
        entry_key = (self._key(image_key, label, weights, box), len(fg) + len(bg))
        with self._lock:
            self._edits[entry_key] = (fg, bg, np.packbits(mask.ravel()).tobytes(), mask.shape)
            self._edits.move_to_end(entry_key)
            while len(self._edits) > self.max_edits:
                self._edits.popitem(last=False)

    def method_of(self, image_key, label, edit_id) -> str | None:
        """The method that answered the latest remembered request of this edit, if any: a request
        that continues an edit without naming a method goes on with the one the edit began with."""
        with self._lock:
            for (k, _), _entry in reversed(self._edits.items()):
                (image, name, (method, _version, edit), _box) = k
                if (image, name, edit) == (image_key, label, edit_id):
                    return method
        return None

    def stats(self) -> dict:
        with self._lock:
            return {"edits": len(self._edits), "max_edits": self.max_edits}
