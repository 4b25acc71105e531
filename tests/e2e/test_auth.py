"""Authentication on: a real server, a local token issuer, every route x every kind of token.

The issuer is what MONAI Label's settings expect of a Keycloak realm: its URL answers
``{"public_key": ...}``. Tokens are RS256 JWTs signed here; a forged one is signed with
another key, an expired one has ``exp`` in the past.
"""
from __future__ import annotations

import base64
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import REPO, Server, make_studies
from tests.e2e.helpers import put_label

pytestmark = pytest.mark.e2e

ROLE = {"user": "monailabel-user", "annotator": "monailabel-annotator", "admin": "monailabel-admin"}
RANK = {"user": 1, "annotator": 2, "admin": 4}


class Issuer:
    """A realm URL on loopback that serves the public key tokens are checked against, and the
    OpenID password login MONAI Label's ``POST /auth/token`` forwards to (Keycloak's layout)."""

    USERS = {"ana": ("ana-secret", "user"), "ben": ("ben-secret", "annotator")}

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        body = json.dumps({"realm": "medseg", "public_key": base64.b64encode(der).decode()}).encode()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status, data: bytes):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.endswith("/.well-known/openid-configuration"):
                    self.answer(200, json.dumps({"token_endpoint": f"{issuer.url}/protocol/openid-connect/token"}).encode())
                else:
                    self.answer(200, body)

            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["content-length"])).decode())
                user = issuer.USERS.get(form.get("username", [""])[0])
                if form.get("grant_type") != ["password"] or user is None or form.get("password") != [user[0]]:
                    return self.answer(401, b'{"error": "invalid_grant"}')
                self.answer(200, json.dumps({"access_token": issuer.token([ROLE[user[1]]]), "token_type": "bearer",
                                             "expires_in": 600}).encode())

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/realms/medseg"

    def token(self, roles, expires_in_s=600, key=None) -> str:
        claims = {"preferred_username": "tester", "exp": int(time.time()) + expires_in_s,
                  "realm_access": {"roles": roles}}
        return jwt.encode(claims, key or self.key, algorithm="RS256")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, sample_sets):
    issuer = Issuer()
    studies = make_studies(tmp_path_factory.mktemp("auth"), sample_sets)
    admin = {"Authorization": f"Bearer {issuer.token([ROLE['admin']])}"}
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.url}
    srv = Server(studies, {"models": "unet3d"}, env=env, headers=admin)
    truth = sample_sets["studies"] / "labels" / "subject_000.nii.gz"
    with open(truth, "rb") as f:
        r = requests.put(f"{srv.url}/datastore/label", params={"image": "subject_000"}, headers=admin,
                         files={"label": (truth.name, f)}, timeout=60)
    assert r.status_code == 200, r.text
    srv.issuer, srv.truth = issuer, truth
    yield srv
    srv.stop()
    issuer.http.shutdown()


def _routes(srv):
    """(name, least role, call(headers) -> response, the answer once the role is enough)."""
    url = srv.url

    def label(h):
        with open(srv.truth, "rb") as f:
            return requests.put(f"{url}/datastore/label", params={"image": "subject_001"}, headers=h,
                                files={"label": (srv.truth.name, f)}, timeout=60)

    return [
        ("info", "user", lambda h: requests.get(f"{url}/info/", headers=h, timeout=30), 200),
        ("datastore", "user", lambda h: requests.get(f"{url}/datastore/", params={"output": "all"}, headers=h,
                                                     timeout=30), 200),
        ("next sample", "user", lambda h: requests.post(f"{url}/activelearning/random", json={}, headers=h,
                                                        timeout=30), 200),
        ("infer", "user", lambda h: requests.post(f"{url}/infer/unet3d", params={"image": "subject_000"},
                                                  headers=h, timeout=120), 200),
        ("label versions", "user", lambda h: requests.get(f"{url}/medseg/labels/subject_000/versions", headers=h,
                                                          timeout=30), 200),
        # The label's shape is not subject_001's, so a permitted call is refused by the check after auth.
        ("submit label", "annotator", label, 422),
        ("train", "admin", lambda h: requests.post(f"{url}/train/unet3d", json={"max_iterations": -1}, headers=h,
                                                   timeout=30), 422),
        ("restore version", "admin", lambda h: requests.post(
            f"{url}/medseg/labels/subject_000/versions/1/restore", headers=h, timeout=60), 200),
        ("delete image", "admin", lambda h: requests.delete(f"{url}/datastore/image", params={"id": "no_such"},
                                                            headers=h, timeout=30), 404),
        ("logs", "admin", lambda h: requests.get(f"{url}/logs/", params={"lines": 5}, headers=h, timeout=30), 200),
        # MONAI Label answers 404 while no training has run.
        ("train status", "user", lambda h: requests.get(f"{url}/train/", headers=h, timeout=30), 404),
        ("download label", "user", lambda h: requests.get(f"{url}/datastore/label", params={"label": "subject_000",
                                                          "tag": "final"}, headers=h, timeout=30), 200),
        ("weight versions", "user", lambda h: requests.get(f"{url}/medseg/models/unet3d/versions", headers=h,
                                                           timeout=30), 200),
        ("upload image", "annotator", lambda h: requests.put(f"{url}/datastore/image", params={"image": "../x"},
                                                             files={"file": ("x.nii.gz", b"x")}, headers=h,
                                                             timeout=30), 422),
        ("image info", "annotator", lambda h: requests.put(f"{url}/datastore/image/info",
                                                           params={"image": "subject_001"},
                                                           data={"info": '{"note": "checked"}'}, headers=h,
                                                           timeout=30), 200),
        ("stop training", "admin", lambda h: requests.delete(f"{url}/train/", headers=h, timeout=30), 200),
        ("delete label", "admin", lambda h: requests.delete(f"{url}/datastore/label", params={"id": "subject_001",
                                                            "tag": "final"}, headers=h, timeout=30), 404),
        ("restore weights", "admin", lambda h: requests.post(f"{url}/medseg/models/unet3d/versions/99/restore",
                                                             headers=h, timeout=30), 404),
        ("gpu logs", "admin", lambda h: requests.get(f"{url}/logs/gpu", headers=h, timeout=30), 404),
        ("upload weights", "admin", lambda h: requests.put(f"{url}/model/unet3d", files={"file": ("m.pt", b"x")},
                                                           headers=h, timeout=30), 405),
    ]


def test_every_route_by_every_kind_of_token(auth_server):
    issuer = auth_server.issuer
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        "none": None,
        "malformed": "not-a-jwt",
        "forged": issuer.token([ROLE["admin"]], key=other_key),
        "expired": issuer.token([ROLE["admin"]], expires_in_s=-60),
        "no role": issuer.token([]),
        **{role: issuer.token([ROLE[role]]) for role in ROLE},
    }
    seen = []
    for name, needed, call, allowed in _routes(auth_server):
        for kind, token in tokens.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            code = call(headers).status_code
            if kind in RANK:
                expected = allowed if RANK[kind] >= RANK[needed] else 403
            else:
                expected = 403 if kind == "no role" else 401
            seen.append((name, kind, code, expected))
    wrong = [s for s in seen if s[2] != s[3]]
    print(f"auth matrix: {len(seen)} requests, {len(wrong)} unexpected")
    assert not wrong, wrong


def test_monai_labels_own_token_check_works(auth_server):
    """MONAI Label's /auth/token/valid (its own decoder, repaired for PyJWT 2) accepts a good token."""
    token = auth_server.issuer.token([ROLE["user"]])
    r = requests.get(f"{auth_server.url}/auth/token/valid", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert put_label  # the helpers module is shared with the other e2e tests


def test_without_auth_only_this_machine_is_answered(server):
    """A client behind a reverse proxy on this machine (X-Forwarded-For) is not local: 403."""
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
    r = requests.get(f"{server.url}/info/", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=30)
    assert r.status_code == 403 and "open_network" in r.json()["detail"]


def test_the_slicer_module_logs_in_and_its_roles_hold(auth_server, tmp_path):
    """MedSegLib as the module uses it on a secured server: it sees a login is needed, logs in through
    MONAI Label's POST /auth/token, sends the bearer token, and is told to log in again on a 401."""
    if str(REPO / "slicer_extension" / "MedSeg") not in sys.path:
        sys.path.insert(0, str(REPO / "slicer_extension" / "MedSeg"))
    from MedSegLib import (AuthenticationRequiredError, LabelSet, MedSegClient, MedSegClientError, ServerResponseError,
                           connect, submit_label)

    client = MedSegClient(auth_server.url, client_id="slicer-ana")
    assert connect(client) == (True, None)  # a login is needed before anything else
    with pytest.raises(AuthenticationRequiredError, match="needs a login") as refused:
        client.server_info()
    assert refused.value.status == 401 and not refused.value.had_token
    with pytest.raises(MedSegClientError, match="password"):
        client.login("ana", "wrong")
    wrong = requests.post(f"{auth_server.url}/auth/token", data={"username": "ana", "password": "x"}, timeout=30)
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.json()["detail"]
    assert client.token is None
    client.login("ana", "ana-secret")
    auth_enabled, info = connect(client)
    assert auth_enabled and info.labels.to_dict() == {"grey_matter": 1, "white_matter": 2}

    labels = LabelSet({"grey_matter": 1, "white_matter": 2})
    with pytest.raises(ServerResponseError) as forbidden:  # a user segments; only an annotator submits
        submit_label(client, "subject_000", str(auth_server.truth), labels)
    assert forbidden.value.status == 403
    annotator = MedSegClient(auth_server.url, client_id="slicer-ben")
    annotator.login("ben", "ben-secret")
    assert submit_label(annotator, "subject_000", str(auth_server.truth), labels).version is not None

    client.token = auth_server.issuer.token([ROLE["user"]], expires_in_s=-30)  # the session outlived it
    with pytest.raises(AuthenticationRequiredError, match="expired") as expired:
        client.server_info()
    assert expired.value.had_token


def test_the_browser_client_asks_for_a_login_and_its_roles_hold(auth_server):
    """/viewer/ on a secured server: the login form first; a user may look but not submit, an
    annotator submits; the token lives in the tab's sessionStorage only."""
    from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, ARTIFACTS, idle, open_page, ready, require_browser

    require_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_page(browser, auth_server.url)
        page.wait_for_selector("#login-panel:not([hidden])", timeout=60_000)
        assert page.is_hidden("#workspace")
        page.screenshot(path=str(ARTIFACTS / "auth-01-login.png"))

        def log_in(user, password):
            page.fill("#username", user)
            page.fill("#password", password)
            page.click("#login-button")

        log_in("ana", "wrong")
        page.wait_for_selector("#error:not([hidden])")
        assert "wrong user name or password" in page.text_content("#error")
        log_in("ana", "ana-secret")
        ready(page)
        idle(page)
        assert page.evaluate("sessionStorage.getItem('medseg.token')") and page.evaluate("localStorage.length") == 0
        page.click("#images-table tr[data-image='subject_000']")
        idle(page)
        page.click("#submit")
        idle(page)
        assert "needs the monailabel-annotator role (HTTP 403)" in page.text_content("#error"), page.text_content("#error")
        page.screenshot(path=str(ARTIFACTS / "auth-02-user-cannot-submit.png"))
        versions_before = page.locator("#versions option").count()

        page.click("#logout-button")
        page.wait_for_selector("#login-panel:not([hidden])")
        assert page.evaluate("sessionStorage.getItem('medseg.token')") is None
        log_in("ben", "ben-secret")
        ready(page)
        idle(page)
        page.click("#images-table tr[data-image='subject_000']")
        idle(page)
        page.click("#submit")
        idle(page)
        assert "Submitted subject_000" in page.text_content("#status"), page.text_content("#error")
        assert page.locator("#versions option").count() == versions_before + 1
        page.screenshot(path=str(ARTIFACTS / "auth-03-annotator-submits.png"))
        browser.close()
