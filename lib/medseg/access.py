"""Who may do what: tokens, roles per route, and the loopback-only default.

MONAI Label's authentication (``MONAI_LABEL_AUTH_ENABLE=true``) verifies a Keycloak-style
JWT against the public key its realm URL serves. As shipped, it cannot work with PyJWT 2
(the installed 2.15): ``jwt.decode`` is called without ``algorithms``, which PyJWT 2
requires, so every token is refused. ``install_token_decoder`` gives MONAI Label's
``from_token`` a decoder that names the algorithms (asymmetric ones only, so a public key
can never be used as an HMAC secret) and requires an expiry.

MONAI Label also guards each route with its own role, and some of those let an annotator
replace model weights (``PUT /model``) or anyone read server logs when auth is off.
``ROUTE_ROLES`` is MedSeg's one table of the least role each route needs; a route not in
it needs admin. Roles are ranked (admin > reviewer > annotator > user), so an admin
token need not list the lesser roles too.

With authentication off (the default), the server answers only clients on this machine:
anyone else gets 403 unless the operator opts in with ``--conf open_network true``.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import sys

from monailabel.config import settings

logger = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
PUBLIC = "public"
USER, ANNOTATOR, REVIEWER, ADMIN = "user", "annotator", "reviewer", "admin"
RANK = {USER: 1, ANNOTATOR: 2, REVIEWER: 3, ADMIN: 4}


def role_names() -> dict[str, str]:
    """MedSeg's role -> the token role name configured for MONAI Label."""
    return {USER: settings.MONAI_LABEL_AUTH_ROLE_USER, ANNOTATOR: settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
            REVIEWER: settings.MONAI_LABEL_AUTH_ROLE_REVIEWER, ADMIN: settings.MONAI_LABEL_AUTH_ROLE_ADMIN}


# (methods, path pattern under the API root, least role). First match wins; no match: admin.
ROUTE_ROLES: list[tuple[str, str, str]] = [
    ("GET HEAD", r"/(docs|openapi\.json|favicon\.ico|static/.*)?", PUBLIC),
    ("OPTIONS", r".*", PUBLIC),  # CORS preflight: browsers send it without credentials
    ("GET POST", r"/auth/(token)?", PUBLIC),  # the login flow itself
    # The browser client's code (medseg.viewer): no data in it; what it shows comes through the routes below.
    ("GET HEAD", r"/viewer(/.*)?", PUBLIC),
    ("GET", r"/auth/token/valid", USER),
    ("GET", r"/info/?", USER),
    ("GET HEAD", r"/datastore/(image|label|image/info|label/info)?", USER),
    ("GET", r"/datastore/dataset", ANNOTATOR),
    ("PUT", r"/datastore/(image|label|image/info|label/info|updatelabelinfo)?", ANNOTATOR),
    ("DELETE", r"/datastore/(image|label)", ADMIN),
    ("POST", r"/infer/[^/]+", USER),
    ("POST", r"/activelearning/[^/]+", USER),
    ("GET", r"/(train|scoring|batch/infer)/?", USER),
    ("POST DELETE", r"/scoring/([^/]+)?", ANNOTATOR),
    ("POST DELETE", r"/train/([^/]+)?", ADMIN),
    ("POST DELETE", r"/batch/infer(/[^/]+)?", ADMIN),
    ("GET PUT DELETE", r"/session/([^/]+)?", USER),
    ("GET", r"/medseg/(labels|models)/[^/]+/versions(/\d+)?", USER),
    ("GET", r"/medseg/effort", USER),
    ("POST", r"/medseg/(labels|models)/[^/]+/versions/\d+/restore", ADMIN),
    ("GET", r"/ohif/.*", USER),
    # /model (weights), /logs, /reload, /proxy (writes to the PACS): admin, by the default below.
]
_COMPILED = [(set(m.split()), re.compile(p), role) for m, p, role in ROUTE_ROLES]


def required_role(method: str, path: str) -> str:
    """The least role ``method path`` needs (``path`` below the API root)."""
    for methods, pattern, role in _COMPILED:
        if method in methods and pattern.fullmatch(path):
            return role
    return ADMIN


def ranked_roles(token_roles: list[str]) -> set[str]:
    """MedSeg roles a token's roles grant: its own, and every lesser one."""
    names = {v: k for k, v in role_names().items()}
    held = [RANK[names[r]] for r in token_roles if r in names]
    top = max(held, default=0)
    return {role for role, rank in RANK.items() if rank <= top}


def has_role(token_roles: list[str], needed: str) -> bool:
    return needed == PUBLIC or needed in ranked_roles(token_roles)


def install_token_decoder() -> None:
    """Make MONAI Label's ``from_token`` verify tokens with PyJWT 2 and rank roles."""
    import jwt
    from monailabel.endpoints.user import auth

    if getattr(auth.from_token, "medseg", False):
        return
    original = auth.from_token

    def from_token(token: str):
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return original(token)
        key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        payload = jwt.decode(token, key, algorithms=ALGORITHMS,
                             options={"verify_signature": True, "verify_aud": False, "verify_exp": True,
                                      "require": ["exp"]})
        roles = payload
        for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
            roles = roles.get(part) if isinstance(roles, dict) else None
        names = role_names()
        granted = sorted({names[r] for r in ranked_roles(roles if isinstance(roles, list) else [])})
        return auth.User(username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
                         email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                         name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=granted)

    from_token.medseg = True
    auth.from_token = from_token


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def bound_host(argv: list[str] | None = None) -> str:
    """The ``--host`` that ``monailabel start_server`` was given (its default: 0.0.0.0)."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg in ("--host", "-i") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return "0.0.0.0"


def warn_if_exposed(open_network: bool) -> None:
    host = bound_host()
    if settings.MONAI_LABEL_AUTH_ENABLE or is_loopback(host):
        return
    if open_network:
        logger.warning("SECURITY: listening on %s with authentication OFF and --conf open_network true: anyone who "
                       "reaches this port can read, change and delete data. See docs/security.md.", host)
    else:
        logger.warning("SECURITY: listening on %s with authentication off: only clients on this machine are answered "
                       "(others get 403). Enable authentication to serve the network (docs/security.md).",
                       host)
