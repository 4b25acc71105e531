"""The one door every HTTP request passes: body size, then who is asking (``medseg.access``).

MONAI Label builds its FastAPI app with no hook for middleware, and Starlette builds the
middleware stack at the first event it serves (the lifespan start, where the app is
created), so ``install`` wraps the stack that already exists. The guard:

1. refuses a body over ``--conf max_upload_mb`` with 413, from ``Content-Length`` before a
   byte is read, or while it streams (chunked uploads): Starlette would otherwise spool
   any size to disk before a route sees it;
2. with authentication on, answers 401 (no, forged or expired token) or 403 (role too
   low for the route) before any route runs; MONAI Label's own checks then run as well;
3. with authentication off, answers 403 to clients that are not on this machine, unless
   ``--conf open_network true``. Behind a reverse proxy on this machine, uvicorn takes the
   client from ``X-Forwarded-For`` (it trusts 127.0.0.1 by default), so proxied remote
   clients are not mistaken for local ones.
"""
from __future__ import annotations

import json
import logging
import sys

from monailabel.config import settings

from medseg import access

logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


class Guard:
    def __init__(self, app, max_body_bytes: int, open_network: bool):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.open_network = open_network

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal:
            return await _answer(send, *refusal)
        state = {"bytes": 0, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not state["started"]:
                await _answer(send, *self.too_large())

    def too_large(self) -> tuple[int, str, dict]:
        mb = self.max_body_bytes / 2**20
        return 413, f"the request body is larger than this server takes ({mb:g} MB, --conf max_upload_mb)", {}

    def refusal(self, scope) -> tuple[int, str, dict] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "Content-Length must be a number of bytes", {}
            if int(length) > self.max_body_bytes:
                return self.too_large()
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            client = (scope.get("client") or ("", 0))[0]
            if self.open_network or access.is_loopback(client):
                return None
            return 403, ("authentication is off, so this server answers only on the machine it runs on; enable "
                         "authentication (docs/security.md) or start it with --conf open_network true"), {}
        return self.check_token(scope["method"], _api_path(scope), headers.get("authorization", ""))

    def check_token(self, method: str, path: str, authorization: str) -> tuple[int, str, dict] | None:
        needed = access.required_role(method, path)
        if needed == access.PUBLIC:
            return None
        challenge = {"www-authenticate": "Bearer"}
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, "this route needs a bearer token (Authorization: Bearer <token>)", challenge
        from monailabel.endpoints.user import auth

        try:
            user = auth.from_token(token.strip())
        except Exception as e:  # PyJWT's InvalidTokenError family, or the issuer not answering
            logger.info("token refused for %s %s: %s", method, path, e)
            return 401, "could not validate the token (signature, expiry or issuer)", challenge
        if not access.has_role(user.roles, needed):
            return 403, f"{method} {path} needs the {access.role_names()[needed]} role", {}
        return None


def _api_path(scope) -> str:
    path = scope.get("path", "")
    root = settings.MONAI_LABEL_API_STR or ""
    return path[len(root):] if root and path.startswith(root) else path


async def _answer(send, status: int, detail: str, headers: dict) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def install(max_upload_mb: float, open_network: bool) -> bool:
    """Put the guard in front of the running server's app; False outside the server."""
    server = sys.modules.get("monailabel.app")
    if server is None:
        return False
    app = server.app
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    if not isinstance(app.middleware_stack, Guard):
        app.middleware_stack = Guard(app.middleware_stack, int(max_upload_mb * 2**20), open_network)
    access.install_token_decoder()
    access.warn_if_exposed(open_network)
    return True
