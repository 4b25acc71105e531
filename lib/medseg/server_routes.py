"""MedSeg's own REST routes, added to the running MONAI Label server.

MONAI Label builds its FastAPI app in ``monailabel.app`` and offers no hook for an
app's own routes. The app instance is created during that server's startup, so the
module is loaded by then; task subprocesses (training, scoring) never load it, and
there this does nothing.
"""
from __future__ import annotations

import logging
import sys

from fastapi import APIRouter
from monailabel.config import settings

logger = logging.getLogger(__name__)


def include_in_server(*routers: APIRouter) -> bool:
    """Add ``routers`` (once each); False outside the server."""
    server = sys.modules.get("monailabel.app")
    if server is None:
        return False
    fastapi_app = server.app
    present = {getattr(route, "path", "") for route in fastapi_app.routes}
    for router in routers:
        if not any(path.startswith(settings.MONAI_LABEL_API_STR + router.prefix) for path in present):
            fastapi_app.include_router(router, prefix=settings.MONAI_LABEL_API_STR)
            logger.info("routes added under %s%s", settings.MONAI_LABEL_API_STR, router.prefix)
    return True


def include_ahead(router: APIRouter) -> bool:
    """Add ``router`` before MONAI Label's own routes, so that its paths answer first; False outside the server.

    For a route that takes over some requests of one of MONAI Label's paths (the first
    matching route answers) and hands the others back to MONAI Label's handler.
    """
    server = sys.modules.get("monailabel.app")
    if server is None:
        return False
    routes = server.app.router.routes
    endpoints = {getattr(r, "endpoint", None) for r in router.routes}
    if any(getattr(r, "endpoint", None) in endpoints for r in routes):
        return True
    before = len(routes)
    server.app.include_router(router, prefix=settings.MONAI_LABEL_API_STR)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
    server.app.openapi_schema = None  # rebuilt on the next /docs request
    logger.info("routes ahead of MONAI Label's under %s%s", settings.MONAI_LABEL_API_STR, router.prefix)
    return True
