"""Which client was last served which image, so two annotators never label the same one.

``<work_dir>/activelearning/reservations.json`` maps image id to ``{"client_id", "until"}``
(UNIX seconds). A reservation ends when the timeout passes; a final label ends it too,
because strategies only consider images without one.
"""
from __future__ import annotations

import time
from pathlib import Path

from medseg.activelearning.jsonstore import locked, read_json, write_json


class Reservations:
    def __init__(self, path: Path, timeout_s: float = 600.0):
        self.path = Path(path)
        self.timeout_s = float(timeout_s)

    def active(self, now: float | None = None) -> dict[str, dict]:
        now = time.time() if now is None else now
        return {k: v for k, v in (read_json(self.path, {}) or {}).items() if v.get("until", 0) > now}

    def reserve_first(self, ranked: list[str], client_id: str, now: float | None = None) -> str | None:
        """Reserve for ``client_id`` the first image of ``ranked`` that no one holds.

        A client that asks again gets a new image while one is free (it asked for the
        next one); only when all are held does it get back one it already holds. None
        when every image is held by other clients.
        """
        now = time.time() if now is None else now
        with locked(self.path):
            held = self.active(now)
            free = [i for i in ranked if i not in held]
            own = [i for i in ranked if held.get(i, {}).get("client_id") == client_id]
            chosen = (free or own or [None])[0]
            if chosen is not None:
                held[chosen] = {"client_id": client_id, "until": now + self.timeout_s, "ts": now}
                write_json(self.path, held)
            return chosen
