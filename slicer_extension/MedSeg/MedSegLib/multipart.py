"""multipart/form-data without ``cgi`` (removed in Python 3.13) or requests_toolbelt.

MONAI Label answers ``POST /infer/<model>`` with a multipart body (a JSON part named
``params`` and the result file in a part named ``image``), and takes labels and images as
multipart uploads. The body is split on the delimiter by hand, because the ``email``
package's body parser may rewrite line endings inside binary parts; only the part headers
(quoted parameters, RFC 2231 file names) go through ``email``.
"""
from __future__ import annotations

import base64
import email.message
import email.parser
import email.policy
import json
import mimetypes
import os
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from .errors import ProtocolError

CRLF = b"\r\n"


@dataclass
class Part:
    name: Optional[str]
    filename: Optional[str]
    content_type: str
    data: bytes

    def json(self):
        return json.loads(self.data.decode("utf-8"))


def boundary_of(content_type: str) -> bytes:
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    if msg.get_content_maintype() != "multipart":
        raise ProtocolError(f"expected a multipart answer, got Content-Type {content_type!r}")
    boundary = msg.get_param("boundary")
    if not boundary or not isinstance(boundary, str):
        raise ProtocolError(f"multipart answer without a boundary: {content_type!r}")
    return boundary.encode("latin-1")


def parse_multipart(body: bytes, content_type: str) -> List[Part]:
    """The parts of a multipart body, in order (RFC 2046 section 5.1.1)."""
    boundary = boundary_of(content_type)
    # A delimiter is CRLF "--" boundary; the first one may start the body without the CRLF.
    pieces = (CRLF + body).split(CRLF + b"--" + boundary)
    if len(pieces) < 2:
        raise ProtocolError("multipart answer holds no part (boundary not found)")
    parts = []
    closed = False
    for piece in pieces[1:]:  # pieces[0] is the preamble
        if piece.startswith(b"--"):
            closed = True
            break
        line_end = piece.find(CRLF)
        if line_end < 0 or piece[:line_end].strip(b" \t"):
            raise ProtocolError("malformed multipart delimiter line")
        piece = piece[line_end + 2:]
        if piece.startswith(CRLF):  # a part without headers
            head, data = b"", piece[2:]
        else:
            head, sep, data = piece.partition(CRLF + CRLF)
            if not sep:
                raise ProtocolError("multipart part without the blank line after its headers")
        parts.append(_part(head, data))
    if not closed:
        raise ProtocolError("multipart answer is truncated (no closing delimiter)")
    return parts


def _part(head: bytes, data: bytes) -> Part:
    headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head + CRLF + CRLF)
    name = headers.get_param("name", header="content-disposition")
    filename = headers.get_filename()
    encoding = (headers.get("content-transfer-encoding") or "").strip().lower()
    if encoding == "base64":
        data = base64.b64decode(data)
    return Part(name=str(name) if name is not None else None, filename=filename,
                content_type=headers.get_content_type() if headers.get("content-type") else "text/plain",
                data=data)


def encode_multipart(fields: Dict[str, str], files: Dict[str, Tuple[str, bytes]]) -> Tuple[str, bytes]:
    """(Content-Type, body) of a form with text ``fields`` and in-memory ``files`` (field -> (name, bytes))."""
    content_type, stream = multipart_stream(fields, {k: (name, data) for k, (name, data) in files.items()})
    return content_type, stream.read()


class MultipartStream:
    """A multipart body read piece by piece, files straight from disk: an upload of a 500 MB CT
    never sits in memory. ``len()`` is the exact body size, sent as Content-Length."""

    def __init__(self, pieces: List[Union[bytes, str]]):
        self._pieces = pieces  # bytes, or the path of a file to send as it is
        self._length = sum(len(p) if isinstance(p, bytes) else os.path.getsize(p) for p in pieces)
        self._index = 0
        self._file = None

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._index < len(self._pieces) and (size < 0 or len(out) < size):
            piece = self._pieces[self._index]
            if isinstance(piece, bytes):
                out += piece
                self._index += 1
                continue
            if self._file is None:
                self._file = open(piece, "rb")
            chunk = self._file.read(-1 if size < 0 else size - len(out))
            if chunk:
                out += chunk
            else:
                self._file.close()
                self._file, self._index = None, self._index + 1
        return bytes(out)


def multipart_stream(fields: Dict[str, str], files: Dict[str, Tuple[str, Union[bytes, str]]]) -> Tuple[str, MultipartStream]:
    """(Content-Type, body) of a form: text ``fields``, and ``files`` as field -> (file name, bytes or
    the path of a file on disk)."""
    boundary = uuid.uuid4().hex
    pieces: List[Union[bytes, str]] = []
    for key, value in fields.items():
        pieces.append(b"--" + boundary.encode() + CRLF
                      + f'Content-Disposition: form-data; name="{_quote(key)}"'.encode() + CRLF + CRLF
                      + value.encode("utf-8") + CRLF)
    for key, (filename, data) in files.items():
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        pieces.append(b"--" + boundary.encode() + CRLF
                      + (f'Content-Disposition: form-data; name="{_quote(key)}"; '
                         f'filename="{_quote(os.path.basename(filename))}"').encode("utf-8") + CRLF
                      + f"Content-Type: {mime}".encode() + CRLF + CRLF)
        pieces.append(data)
        pieces.append(CRLF)
    pieces.append(b"--" + boundary.encode() + b"--" + CRLF)
    return f"multipart/form-data; boundary={boundary}", MultipartStream(pieces)


def _quote(text: str) -> str:
    # HTML's form encoding: quotes and line breaks in names are percent-escaped.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
