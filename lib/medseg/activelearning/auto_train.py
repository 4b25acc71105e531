"""Retrain by itself after every K new final labels (``--conf auto_train_after K``).

The count is derived from the datastore, not from events: the final labels saved
after the last automatic start (their ``ts``). So it survives restarts, and a label
saved twice counts once. The start time lives in a small JSON file in the work dir.
"""
from __future__ import annotations

import time
from pathlib import Path

from medseg.activelearning.jsonstore import locked, read_json, write_json

FINAL = "final"


class AutoTrain:
    def __init__(self, path: Path, every: int):
        self.path = Path(path)
        self.every = int(every)
        with locked(self.path):
            if read_json(self.path) is None:
                write_json(self.path, {"since": int(time.time())})  # labels from before do not count

    def since(self) -> float:
        return float((read_json(self.path) or {}).get("since", 0.0))

    def new_final_labels(self, datastore) -> int:
        since = self.since()
        count = 0
        for image_id in datastore.list_images():
            if FINAL in datastore.get_labels_by_image_id(image_id):
                count += float(datastore.get_label_info(image_id, FINAL).get("ts") or 0) > since
        return count

    def due(self, datastore) -> bool:
        return self.every > 0 and self.new_final_labels(datastore) >= self.every

    def started(self) -> None:
        with locked(self.path):
            # Label times are whole seconds: a label saved in this same second is not counted.
            write_json(self.path, {"since": int(time.time())})
