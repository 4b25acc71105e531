"""Errors of the label-server client.

Every message is meant to be shown to a clinician as is: it says what went wrong and what to
do about it. The widget shows ``str(error)``; the traceback goes behind "Show details".
"""
from __future__ import annotations


class MedSegClientError(Exception):
    """Base class of everything the client raises on purpose."""


class ServerUnreachableError(MedSegClientError):
    """No connection: wrong address, server not started, network down."""

    def __init__(self, server_url: str, reason: str):
        self.server_url = server_url
        self.reason = reason
        super().__init__(
            f"Cannot reach the label server at {server_url} ({reason}). "
            "Check the address and that the server is running (on the server machine: make serve)."
        )


class ServerTimeoutError(MedSegClientError):
    """Connected, but no answer in time (server busy, or a very slow network)."""

    def __init__(self, server_url: str, action: str, timeout_s: float):
        self.server_url = server_url
        self.action = action
        self.timeout_s = timeout_s
        super().__init__(
            f"The label server at {server_url} did not answer within {timeout_s:g} s while trying to {action}. "
            "It may be busy (training or another segmentation); try again in a moment."
        )


class ServerResponseError(MedSegClientError):
    """The server answered with an HTTP error; ``detail`` is its own message."""

    def __init__(self, action: str, status: int, detail: str, url: str = ""):
        self.action = action
        self.status = int(status)
        self.detail = detail
        self.url = url
        if self.status >= 500:
            text = (f"The label server failed to {action} (HTTP {self.status}): {detail}. "
                    "The server log has the details.")
        else:
            text = f"The label server refused to {action} (HTTP {self.status}): {detail}"
        super().__init__(text)


class ProtocolError(MedSegClientError):
    """The answer does not follow MONAI Label's REST contract (wrong server, proxy page, ...)."""


class LabelMappingError(MedSegClientError):
    """Segments or label values that do not map onto the app's labels."""


class AuthenticationRequiredError(ServerResponseError):
    """HTTP 401: the server wants a login, or the token has expired; log in (again)."""

    def __init__(self, action: str, status: int, detail: str, url: str = "", had_token: bool = False):
        super().__init__(action, status, detail, url)
        self.had_token = had_token
        self.args = ((f"The label server needs a login to {action}: " if not had_token else
                      f"Your login has expired or was refused while trying to {action}: ")
                     + f"{detail}. Log in (Server section) and try again.",)


class RequestCancelledError(MedSegClientError):
    """The user cancelled the request while its answer was arriving."""

    def __init__(self):
        super().__init__("Cancelled.")
