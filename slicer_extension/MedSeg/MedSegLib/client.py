"""HTTP client for a MONAI Label server (MedSeg's, or a stock one), standard library only.

It keeps to MONAI Label's REST contract (paths, query parameters, multipart layout), so it works
against any MONAI Label server; MedSeg's optional extras (label versions, ``model_version``,
training progress) are read where present and skipped where absent.

Every call blocks: the Slicer widget runs them on a worker thread (see ``jobs.py``).
"""
from __future__ import annotations

import email.message
import getpass
import http.client
import io
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .errors import (AuthenticationRequiredError, MedSegClientError, ProtocolError, RequestCancelledError,
                     ServerResponseError, ServerTimeoutError, ServerUnreachableError)
from .info import ServerInfo
from .multipart import MultipartStream, multipart_stream, parse_multipart

# Seconds without a byte from the server before giving up. Inference runs on the server while
# the client waits for the first byte, so it gets much longer (a CPU server takes minutes for a
# large volume with TTA).
DEFAULT_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 300.0
INFER_TIMEOUT_S = 1800.0

CHUNK_BYTES = 1 << 20


def normalize_server_url(text: str) -> str:
    """``host:port`` or a full URL -> ``http(s)://host:port[/prefix]`` without a trailing slash."""
    text = (text or "").strip()
    if not text:
        raise MedSegClientError("Enter the label server's address, for example http://127.0.0.1:8000")
    if "://" not in text:
        text = "http://" + text
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MedSegClientError(f"{text!r} is not a server address; use the form http://host:port")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise MedSegClientError(f"{text!r} has an invalid port number") from None
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def default_client_id() -> str:
    """Who is labeling: the server reserves served images per client (MONAI Label's ``client_id``)."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers)
        user = "slicer"
    return f"{user}@{socket.gethostname()}"


def safe_filename(name: str, fallback: str) -> str:
    """A file name from a server-supplied name: no folders, no odd characters."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base or fallback


def image_id_for(name: str) -> str:
    """A datastore image id for a Slicer volume name (MONAI Label ids are file names without extension)."""
    name = re.sub(r"\.(nii\.gz|nii|nrrd|mha|mhd)$", "", (name or "").strip(), flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return name or "image"


@dataclass
class InferResult:
    """A segmentation (or uncertainty map) from ``POST /infer/<model>``."""

    model: str
    image_id: str
    path: Optional[str]
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def model_version(self) -> Optional[int]:
        return self.params.get("model_version")

    @property
    def output(self) -> str:
        return str(self.params.get("output", "labels"))

    @property
    def latency_s(self) -> Optional[float]:
        latencies = self.params.get("latencies")
        return latencies.get("total") if isinstance(latencies, dict) else None


class MedSegClient:
    def __init__(self, server_url: str, timeout_s: float = DEFAULT_TIMEOUT_S, client_id: Optional[str] = None,
                 token: Optional[str] = None):
        self.server_url = normalize_server_url(server_url)
        self.timeout_s = float(timeout_s)
        self.client_id = client_id or default_client_id()
        self.token = token  # a bearer token from login(); kept in memory only

    # ---------------------------------------------------------------- authentication
    def auth_enabled(self) -> bool:
        """``GET /auth/``: whether the server asks for a token (MONAI Label's switch)."""
        try:
            answer = self._json("GET", "/auth/", action="ask whether the server needs a login")
        except ServerResponseError as e:
            if e.status == 404:  # a server without MONAI Label's auth routes
                return False
            raise
        return bool(isinstance(answer, dict) and answer.get("enabled"))

    def login(self, username: str, password: str) -> str:
        """``POST /auth/token`` (MONAI Label's password login, forwarded to the server's OpenID issuer):
        the bearer token every later request sends. The password is not kept."""
        if not username or not password:
            raise MedSegClientError("Enter a user name and a password to log in")
        body = urllib.parse.urlencode({"username": username, "password": password}).encode("utf-8")
        try:
            answer = self._json("POST", "/auth/token", body=body, content_type="application/x-www-form-urlencoded",
                                action=f"log in as {username}")
        except AuthenticationRequiredError:
            raise MedSegClientError(f"The server refused the login of {username}: check the user name and "
                                    "password") from None
        except ServerResponseError as e:
            if e.status >= 500:  # MONAI Label answers a refusal by the issuer as a server error
                raise MedSegClientError(f"The login of {username} failed: the user name or password is wrong, or "
                                        f"the server cannot reach its login service ({e.detail})") from None
            raise
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not token:
            raise MedSegClientError("This server does not use logins (authentication is off); connect without one")
        self.token = str(token)
        return self.token

    def logout(self) -> None:
        self.token = None

    # ---------------------------------------------------------------- app and datastore
    def info(self) -> dict:
        return self._json("GET", "/info/", action="read the app description (/info)")

    def server_info(self) -> ServerInfo:
        return ServerInfo.from_json(self.info())

    def next_sample(self, strategy: str, params: Optional[dict] = None) -> Optional[dict]:
        """The image a strategy picks, or None when there is none left for this client.

        The answer holds ``id`` and, from a local datastore, ``path`` (usable when the studies
        folder is shared with this machine).
        """
        body = {"client_id": self.client_id, **(params or {})}
        answer = self._json("POST", f"/activelearning/{_q(strategy)}", json_body=body,
                            action=f"pick the next image with strategy '{strategy}'")
        if not isinstance(answer, dict):
            raise ProtocolError(f"unexpected next-sample answer: {answer!r}")
        return answer if answer.get("id") else None

    def download_image(self, image_id: str, dest_dir: str, timeout_s: float = TRANSFER_TIMEOUT_S,
                       cancel: Optional[threading.Event] = None) -> str:
        """``GET /datastore/image``: the image file, saved under its own name in ``dest_dir``."""
        os.makedirs(dest_dir, exist_ok=True)
        holder: Dict[str, str] = {}

        def sink(response):
            name = safe_filename(_filename(response.headers) or "", f"{safe_filename(image_id, 'image')}.nii.gz")
            path = os.path.join(dest_dir, name)
            _save_stream(response, path, cancel)
            holder["path"] = path

        self._request("GET", "/datastore/image", query={"image": image_id}, timeout_s=timeout_s,
                      action=f"download image '{image_id}'", sink=sink)
        return holder["path"]

    def upload_image(self, path: str, image_id: Optional[str] = None, timeout_s: float = TRANSFER_TIMEOUT_S) -> str:
        """``PUT /datastore/image``: add a volume file to the datastore; its id is returned."""
        image_id = image_id or image_id_for(os.path.basename(path))
        content_type, body = multipart_stream({"params": "{}"}, {"file": (os.path.basename(path), path)})
        answer = self._json("PUT", "/datastore/image", query={"image": image_id}, body=body,
                            content_type=content_type, timeout_s=timeout_s,
                            action=f"add image '{image_id}' to the datastore")
        return str(answer.get("image", image_id)) if isinstance(answer, dict) else image_id

    def image_info(self, image_id: str) -> dict:
        return self._json("GET", "/datastore/image/info", query={"image": image_id},
                          action=f"read the info of image '{image_id}'")

    # ---------------------------------------------------------------- labels
    def save_label(self, image_id: str, label_path: str, tag: str = "final", params: Optional[dict] = None,
                   timeout_s: float = TRANSFER_TIMEOUT_S) -> dict:
        """``PUT /datastore/label``: store a label file for an image (params: ``label_info``, ...)."""
        params = {"client_id": self.client_id, **(params or {})}
        content_type, body = multipart_stream({"params": json.dumps(params)},
                                              {"label": (os.path.basename(label_path), label_path)})
        return self._json("PUT", "/datastore/label", query={"image": image_id, "tag": tag}, body=body,
                          content_type=content_type, timeout_s=timeout_s,
                          action=f"save the label of image '{image_id}'")

    def label_info(self, image_id: str, tag: str = "final") -> dict:
        """``GET /datastore/label/info``; MedSeg's holds the stored ``version``."""
        return self._json("GET", "/datastore/label/info", query={"label": image_id, "tag": tag},
                          action=f"read the label info of image '{image_id}'")

    def label_versions(self, image_id: str) -> Optional[List[dict]]:
        """MedSeg's label history (oldest first); None from a server without it (stock MONAI Label)."""
        try:
            answer = self._json("GET", f"/medseg/labels/{_q(image_id)}/versions",
                                action=f"list the label versions of image '{image_id}'")
        except ServerResponseError as e:
            if e.status in (404, 405, 501):
                return None
            raise
        return list(answer.get("versions", [])) if isinstance(answer, dict) else None

    def download_label(self, image_id: str, dest_dir: str, tag: str = "final",
                       timeout_s: float = TRANSFER_TIMEOUT_S) -> str:
        """``GET /datastore/label``: the stored label file of an image, saved in ``dest_dir``."""
        os.makedirs(dest_dir, exist_ok=True)
        path = os.path.join(dest_dir, f"{safe_filename(image_id, 'image')}_{safe_filename(tag, 'label')}.nii.gz")
        self._request("GET", "/datastore/label", query={"label": image_id, "tag": tag}, timeout_s=timeout_s,
                      action=f"download the {tag} label of image '{image_id}'",
                      sink=lambda response: _save_stream(response, path))
        return path

    def restore_label_version(self, image_id: str, version: int) -> dict:
        """MedSeg's ``POST /medseg/labels/<image>/versions/<n>/restore``: that version becomes the final
        label again, as a new version (nothing is overwritten)."""
        return self._json("POST", f"/medseg/labels/{_q(image_id)}/versions/{int(version)}/restore",
                          json_body={"client_id": self.client_id},
                          action=f"restore version {int(version)} of the label of image '{image_id}'")

    # ---------------------------------------------------------------- inference
    def infer(self, model: str, image_id: str, params: Optional[dict] = None, dest_dir: Optional[str] = None,
              timeout_s: float = INFER_TIMEOUT_S, label_path: Optional[str] = None,
              cancel: Optional[threading.Event] = None) -> InferResult:
        """``POST /infer/<model>?image=<id>``: the label map (or float map) saved in ``dest_dir``.

        ``label_path``: a label file sent with the request (an interactive task's prior or scribbles).
        The answer is written to disk as it arrives; ``cancel`` set meanwhile stops the transfer.
        """
        import tempfile

        dest_dir = dest_dir or tempfile.mkdtemp(prefix="medseg-")
        os.makedirs(dest_dir, exist_ok=True)
        files = {"label": (os.path.basename(label_path), label_path)} if label_path else {}
        content_type, body = multipart_stream({"params": json.dumps(params or {})}, files)
        fd, spool = tempfile.mkstemp(dir=dest_dir, prefix=".answer-")
        os.close(fd)
        try:
            status, headers, _ = self._request(
                "POST", f"/infer/{_q(model)}", query={"image": image_id}, body=body, content_type=content_type,
                timeout_s=timeout_s, action=f"segment image '{image_id}' with model '{model}'",
                sink=lambda response: _save_stream(response, spool, cancel))
            return self._infer_result(model, image_id, headers, spool, dest_dir)
        finally:
            if os.path.exists(spool):
                os.remove(spool)

    def _infer_result(self, model: str, image_id: str, headers, spool: str, dest_dir: str) -> InferResult:
        answer_type = headers.get("Content-Type", "")
        result_params: Dict[str, Any] = {}
        file_name, file_data = None, None
        if answer_type.startswith(("multipart/", "application/json")):
            # A label map compressed is small next to its image; only the image-only answer is big.
            with open(spool, "rb") as f:
                payload = f.read()
            if answer_type.startswith("multipart/"):
                for part in parse_multipart(payload, answer_type):
                    if part.filename:
                        file_name, file_data = part.filename, part.data
                    elif part.name == "params":
                        result_params = _json_object(part.data, "the params part of the infer answer")
            else:
                result_params = _json_object(payload, "the infer answer")  # a model that returns no image
        else:
            file_name = _filename(headers)  # output=image: the body is the file
        if file_data is None and answer_type.startswith(("multipart/", "application/json")):
            return InferResult(model=model, image_id=image_id, path=None, params=result_params)
        suffix = ".nii.gz" if not file_name or file_name.endswith(".nii.gz") else os.path.splitext(file_name)[1]
        kind = "uncertainty" if result_params.get("output") == "uncertainty" else "label"
        path = os.path.join(dest_dir, f"{safe_filename(image_id, 'image')}_{safe_filename(model, 'model')}_{kind}{suffix}")
        if file_data is None:
            os.replace(spool, path)
        else:
            with open(path, "wb") as f:
                f.write(file_data)
        return InferResult(model=model, image_id=image_id, path=path, params=result_params)

    # ---------------------------------------------------------------- training
    def train_start(self, model: Optional[str] = None, options: Optional[dict] = None) -> dict:
        path = f"/train/{_q(model)}" if model else "/train/"
        return self._json("POST", path, json_body=options or {}, action=f"start training{' ' + model if model else ''}")

    def train_stop(self) -> Optional[dict]:
        return self._json("DELETE", "/train/", action="stop training")

    def train_status(self) -> Optional[dict]:
        """The last training task (``status``: SUBMITTED, RUNNING, DONE, ERROR, STOPPED), None if never run."""
        try:
            return self._json("GET", "/train/", action="read the training status")
        except ServerResponseError as e:
            if e.status == 404:  # "No Train Tasks Found"
                return None
            raise

    # ---------------------------------------------------------------- plumbing
    def _json(self, method: str, path: str, query: Optional[dict] = None, json_body: Any = None,
              body: Optional[bytes] = None, content_type: Optional[str] = None,
              timeout_s: Optional[float] = None, action: str = "answer"):
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode("utf-8"), "application/json"
        _, _, payload = self._request(method, path, query=query, body=body, content_type=content_type,
                                      timeout_s=timeout_s, action=action)
        if not payload.strip():
            return None
        try:
            return json.loads(payload.decode("utf-8"))
        except ValueError:
            raise ProtocolError(f"the server's answer to '{action}' is not JSON: {payload[:200]!r}") from None

    def _request(self, method: str, path: str, query: Optional[dict] = None, body=None,
                 content_type: Optional[str] = None, timeout_s: Optional[float] = None, action: str = "answer",
                 sink: Optional[Callable] = None):
        """(status, headers, body); HTTP errors and network failures become MedSegClientErrors."""
        url = self.server_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        headers = {"Accept": "application/json, multipart/form-data, */*"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            if isinstance(body, MultipartStream):
                response = _send_streamed(method, url, body, headers, timeout)
            else:
                response = urllib.request.urlopen(urllib.request.Request(url, data=body, method=method,
                                                                         headers=headers), timeout=timeout)
            with response:
                if response.status >= 400:
                    raise urllib.error.HTTPError(url, response.status, response.reason, response.headers,
                                                 io.BytesIO(response.read()))
                if sink is not None:
                    sink(response)
                    return response.status, response.headers, b""
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            try:
                payload = e.read()
            except Exception:
                payload = b""
            if e.code == 401:
                raise AuthenticationRequiredError(action, e.code, error_detail(payload, e.reason), url,
                                                  had_token=bool(self.token)) from None
            raise ServerResponseError(action, e.code, error_detail(payload, e.reason), url) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, socket.timeout) or isinstance(e.reason, TimeoutError):
                raise ServerTimeoutError(self.server_url, action, timeout) from None
            raise ServerUnreachableError(self.server_url, _reason_text(e.reason)) from None
        except (socket.timeout, TimeoutError):
            # socket.timeout is an OSError in Python 3.9 (Slicer 5.8), TimeoutError from 3.10 on.
            raise ServerTimeoutError(self.server_url, action, timeout) from None
        except (http.client.HTTPException, ConnectionError, socket.gaierror) as e:
            raise ServerUnreachableError(self.server_url, f"the connection broke: {_reason_text(e)}") from None


def _send_streamed(method: str, url: str, body: MultipartStream, headers: dict, timeout: float):
    """Send a streamed body; the answer, also when the server answered before reading it all.

    A server that refuses an upload (401, 403, 413) answers at once and closes the connection:
    sending the rest then breaks the pipe, yet its answer is waiting to be read.
    """
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = cls(parts.hostname, parts.port, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method, target, body=body, headers={**headers, "Content-Length": str(len(body))})
    except (BrokenPipeError, ConnectionResetError):
        pass  # read the answer the server gave before it stopped reading
    return connection.getresponse()


def _save_stream(response, path: str, cancel: Optional[threading.Event] = None) -> None:
    with open(path, "wb") as f:
        while True:
            if cancel is not None and cancel.is_set():
                raise RequestCancelledError()
            chunk = response.read(CHUNK_BYTES)
            if not chunk:
                break
            f.write(chunk)


def error_detail(payload: bytes, reason: str = "") -> str:
    """The server's own message from an error answer (FastAPI: ``{"detail": ...}``)."""
    text = payload.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}, ...]
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
                for d in detail)
        return str(detail)
    if text and not text.lstrip().startswith("<"):
        return text[:500]
    return reason or "no message"


def _json_object(payload: bytes, what: str) -> dict:
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError:
        raise ProtocolError(f"{what} is not JSON") from None
    if isinstance(data, str):  # MONAI Label sometimes double-encodes
        try:
            data = json.loads(data)
        except ValueError:
            pass
    return data if isinstance(data, dict) else {}


def _filename(headers) -> Optional[str]:
    disposition = headers.get("Content-Disposition") if headers is not None else None
    if not disposition:
        return None
    msg = email.message.Message()
    msg["Content-Disposition"] = disposition
    return msg.get_filename()


def _reason_text(reason) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(reason, socket.gaierror):
        return "unknown host name"
    return str(reason) or type(reason).__name__


def _q(segment: str) -> str:
    return urllib.parse.quote(str(segment), safe="")
