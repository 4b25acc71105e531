"""Retrain by itself after every K new final labels (``--conf auto_train_after K``).

The count is derived from the datastore, not from events: the images whose final
label (its version number, see medseg.datastore.versions) changed since the last
automatic start, or since the server first ran with this setting. So it survives
restarts, and a label saved twice counts once. The snapshot of versions lives in a
small JSON file in the work dir.
"""
from __future__ import annotations

from pathlib import Path

from medseg.activelearning.jsonstore import locked, read_json, write_json

FINAL = "final"


def final_versions(datastore) -> dict[str, object]:
    """Image id -> version of its final label, for every image that has one."""
    versions = {}
    for image_id in datastore.list_images():
        if FINAL in datastore.get_labels_by_image_id(image_id):
            info = datastore.get_label_info(image_id, FINAL)
            versions[image_id] = info.get("version", info.get("ts"))
    return versions


class AutoTrain:
    def __init__(self, path: Path, every: int, datastore):
        self.path = Path(path)
        self.every = int(every)
        with locked(self.path):
            if read_json(self.path) is None:
                write_json(self.path, {"seen": final_versions(datastore)})  # labels from before do not count

    def new_final_labels(self, datastore) -> int:
        seen = (read_json(self.path) or {}).get("seen", {})
        return sum(seen.get(image) != version for image, version in final_versions(datastore).items())

    def due(self, datastore) -> bool:
        return self.every > 0 and self.new_final_labels(datastore) >= self.every

    def started(self, datastore) -> None:
        with locked(self.path):
            write_json(self.path, {"seen": final_versions(datastore)})
