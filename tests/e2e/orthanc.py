"""A real Orthanc PACS (Debian packages ``orthanc`` and ``orthanc-dicomweb``) for end-to-end tests.

Each instance keeps its storage and index in a temporary folder, listens on a free
HTTP port on loopback only (``RemoteAccessAllowed: false``), has no authentication,
and loads only the DICOMweb plugin. Orthanc's own DICOM (C-STORE) listener would
bind every network interface (Orthanc 1.10 has no bind-address option), so it is
off unless a test asks for it; tests push instances over HTTP instead.

``.ci/run`` installs the packages when the ``Orthanc`` binary is missing, so CI
runs these tests; elsewhere they are skipped when Orthanc is not installed (with
the environment variable ``CI`` set they fail instead, so CI never skips them silently).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import requests

from medseg.server_process import ChildProcess, free_port

# Where Debian's packages put them (dpkg -L orthanc orthanc-dicomweb); the env vars override.
BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc", "/usr/local/sbin/Orthanc")
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                     "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "install it with: sudo apt-get install -y orthanc orthanc-dicomweb (.ci/run does this)"


def find_orthanc() -> tuple[str | None, str | None, str]:
    """(binary, DICOMweb plugin, what is missing); ``what`` is empty when both were found."""
    binary = os.environ.get("ORTHANC_BINARY") or shutil.which("Orthanc")
    # /usr/sbin is often not on a normal user's PATH.
    binary = binary or next((p for p in BINARY_CANDIDATES if os.access(p, os.X_OK)), None)
    if binary and not os.access(binary, os.X_OK):
        binary = None
    plugin = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    if not plugin:
        found = [f for pattern in PLUGIN_CANDIDATES for f in sorted(glob.glob(pattern))]
        plugin = found[0] if found else None
    missing = []
    if not binary:
        missing.append("the Orthanc binary (package orthanc)")
    if not plugin or not os.path.isfile(plugin):
        missing.append("Orthanc's DICOMweb plugin (package orthanc-dicomweb)")
        plugin = None
    return binary, plugin, " and ".join(missing)


class Orthanc:
    """One Orthanc process over ``workdir``; ``start()`` waits until ``GET /system`` answers."""

    def __init__(self, workdir: Path, dicom_server: bool = False, name: str = "MEDSEG_TEST"):
        self.workdir = Path(workdir)
        self.dicom_server = dicom_server
        self.name = name
        self.binary, self.plugin, missing = find_orthanc()
        if missing:
            raise FileNotFoundError(f"Orthanc is not installed: missing {missing}; {INSTALL_HINT}")
        self.process: ChildProcess | None = None
        self.http_port = self.dicom_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {
            "Name": self.name,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # answer loopback clients only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": self.dicom_server,
            "DicomPort": self.dicom_port or 4242,
            "DicomAet": self.name[:16],
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpThreadsCount": 8,
        }

    def start(self, timeout_s: float = 60, attempts: int = 3) -> "Orthanc":
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        (self.workdir / "index").mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):  # a free port can be taken between choosing and binding it
            self.http_port = free_port()
            self.dicom_port = free_port() if self.dicom_server else 0
            config_path = self.workdir / "orthanc.json"
            config_path.write_text(json.dumps(self.config(), indent=1))
            self.process = ChildProcess([self.binary, str(config_path)], self.workdir / f"orthanc-{self.http_port}.log",
                                        cwd=self.workdir)
            self.process.what = "Orthanc"
            try:
                self.process.wait_ready(self._ready, timeout_s, poll_s=0.2)
                return self
            except RuntimeError as e:
                last_error = str(e)
                self.stop()
        raise RuntimeError(f"Orthanc did not start after {attempts} attempts: {last_error}")

    def _ready(self) -> bool:
        if requests.get(f"{self.url}/system", timeout=2).status_code != 200:
            return False
        plugins = requests.get(f"{self.url}/plugins", timeout=5).json()
        if "dicom-web" not in plugins:
            raise RuntimeError(f"Orthanc runs without its DICOMweb plugin (plugins: {plugins})")
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------- Orthanc's REST API

    def upload(self, files) -> list[str]:
        """POST each DICOM file to /instances; their Orthanc instance ids."""
        ids = []
        for path in files:
            r = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=60,
                              headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            ids.append(r.json()["ID"])
        return ids

    def series(self) -> list[dict]:
        """Every series with its main DICOM tags (Orthanc's expanded /series)."""
        return requests.get(f"{self.url}/series", params={"expand": ""}, timeout=30).json()

    def series_by_modality(self, modality: str) -> list[dict]:
        return [s for s in self.series() if s["MainDicomTags"].get("Modality") == modality]

    def instance_file(self, series: dict, index: int = 0) -> bytes:
        """The DICOM file of one instance of an expanded series entry."""
        instance = series["Instances"][index]
        r = requests.get(f"{self.url}/instances/{instance}/file", timeout=60)
        r.raise_for_status()
        return r.content
