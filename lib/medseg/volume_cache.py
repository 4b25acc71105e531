"""Images kept in memory between interactive requests: least recently used first out, bounded in bytes.

A clinician clicks many times on one image; reading and decoding a 512x512x300 CT each time
costs more than the edit itself. An entry is keyed by the file's path, size and modification
time, so an image replaced in the datastore is read again, never served stale.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from medseg.imageio import read_volume

from medseg.volume import Volume

DEFAULT_CACHE_MB = 2048


class VolumeCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_MB << 20):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, Volume] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(path: str) -> tuple:
        st = os.stat(path)
        return os.path.realpath(path), st.st_size, st.st_mtime_ns

    @property
    def bytes_held(self) -> int:
        return sum(v.array.nbytes for v in self._entries.values())

    def get(self, path: str) -> Volume:
        """The volume at ``path``, from memory when it has not changed on disk."""
        key = self.key(path)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        volume = read_volume(path)
        with self._lock:
            self.misses += 1
            for old in [k for k in self._entries if k[0] == key[0]]:  # an older version of the same file
                del self._entries[old]
            if volume.array.nbytes <= self.max_bytes:
                self._entries[key] = volume
                while self.bytes_held > self.max_bytes:
                    self._entries.popitem(last=False)
        return volume

    def stats(self) -> dict:
        with self._lock:
            return {"images": len(self._entries), "mb_held": round(self.bytes_held / 2**20, 1),
                    "max_mb": round(self.max_bytes / 2**20, 1), "hits": self.hits, "misses": self.misses}
