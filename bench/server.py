"""A real MedSeg server for benchmark scripts (the same command users run)."""
from __future__ import annotations

from pathlib import Path

from medseg.server_process import LabelServer

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "medseg"


class BenchServer(LabelServer):
    """``monailabel start_server`` over ``studies``; a context manager that stops it. Slow machines
    and first runs (imports, caches) get 5 minutes to start."""

    def __init__(self, studies: Path, conf: dict[str, str], log_path: Path):
        log_path = Path(log_path)
        super().__init__(APP_DIR, studies, conf, log_path.parent, timeout_s=300, log_name=log_path.name)

    def wait_for(self, kind: str, timeout_s: float = 3600) -> dict:
        return self.wait_for_task(kind, timeout_s)
