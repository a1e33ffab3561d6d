"""Who may do what (issue 30): every route's rule, every role, gallery scopes, stream-job owners,
the audit trail, and keys kept hashed and refused at once when revoked.

The rule table is read from the app itself (`app.routes`): a route added without a rule fails
`test_every_route_declares_one_rule`, and the matrix sends every route a request with every kind of
key, so a rule that says one thing while the route does another fails too.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import Server, package_photo, start_server, stop_server
from fastapi.routing import APIRoute, iter_route_contexts
from helpers import b64, run_cli

from facerest.access.audit import FIELDS, AuditTrail, load_secret, pseudonym
from facerest.access.keys import KeyFile, KeyRing, key_digest
from facerest.access.roles import ACTIONS, PUBLIC, Principal
from facerest.api.access import BODY, KEY, Rule, rule_of
from facerest.api.app import create_app
from facerest.api.middleware import OPEN_PATHS, is_open
from facerest.client import Client, Forbidden
from facerest.config import Settings

YAO = package_photo("yaoming.jpg")

#: the keys of the module's server: name -> (role, galleries)
KEYS: dict[str, tuple[str, list[str] | None]] = {
    "viewer": ("viewer", None),
    "operator": ("operator", None),
    "operator2": ("operator", None),
    "admin": ("admin", None),
    "scoped": ("operator", ["A", "staff"]),
    "door": ("viewer", ["staff"]),
}


@functools.cache
def routes() -> list[tuple[str, str, list[Rule]]]:
    """(method, path, rules) of every route of the app, from `app.routes`."""
    # the compatibility APIs (issue 31) are off by default: on here, so their routes are checked too
    app = create_app(Settings(compreface_enabled=True, deepstack_enabled=True))
    out = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        rules = rule_of(route.dependant.dependencies) if isinstance(route, APIRoute) else []
        for method in sorted((context.methods or set()) - {"HEAD"}):
            out.append((method, context.path, rules))
    return out


DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
WHERE = {"path": "gallery", "body": BODY, "key": KEY, "-": None}


@functools.cache
def documented() -> dict[tuple[str, str], Rule]:
    """The rule table of docs/api.md ("Keys, roles and galleries"): the specification."""
    text = DOCS.read_text()
    table = text[text.index("<!-- rules: begin -->") : text.index("<!-- rules: end -->")]
    out = {}
    for line in table.splitlines()[3:]:
        method, path, action, where = (cell.strip() for cell in line.strip("|").split("|"))
        out[(method, path)] = Rule(action.split()[0], WHERE[where])
    return out


def test_every_route_declares_one_rule_the_one_documented() -> None:
    wrong = []
    seen = set()
    for method, path, rules in routes():
        if path in OPEN_PATHS and not rules:
            continue  # FastAPI's own documentation routes: open, no route of ours
        seen.add((method, path))
        if len(rules) != 1:
            wrong.append(f"{method} {path}: {len(rules)} rules, not one Depends(allow(...))")
            continue
        if rules[0].action != PUBLIC and rules[0].action not in ACTIONS:
            wrong.append(f"{method} {path}: unknown action {rules[0].action}")
        spec = documented().get((method, path))
        if spec is None:
            wrong.append(f"{method} {path}: not in docs/api.md's rule table")
        elif spec != rules[0]:
            wrong.append(f"{method} {path}: declares {rules[0]}, docs/api.md says {spec}")
    wrong += [f"{m} {p}: documented, but no such route" for m, p in set(documented()) - seen]
    assert not wrong, "\n".join(wrong)


def test_public_routes_are_exactly_the_paths_open_without_a_key() -> None:
    """The middleware lets requests without a key through to exactly the public routes."""
    for _, path, rules in routes():
        if rules:
            assert (rules[0].action == PUBLIC) == is_open(path), path


# --- keys, at rest and in the ring (no server) ---


def test_key_ring_follows_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing(path, plain=[])
    assert ring.principal("") == Principal("anonymous", "admin")  # nothing configured: open
    keys = KeyFile(path)
    _, door_key = keys.create("door", "viewer", ["staff"])
    assert ring.principal(door_key) == Principal("door", "viewer", frozenset({"staff"}))
    assert ring.principal("") is None and ring.principal(door_key + "x") is None
    _, admin_key = keys.create("boss", "admin")
    assert ring.principal(admin_key) == Principal("boss", "admin")
    keys.revoke("door")
    assert ring.principal(door_key) is None  # the next lookup already refuses it
    assert ring.principal(admin_key) is not None
    with pytest.raises(Exception, match="exists"):
        keys.create("door", "viewer")  # a revoked key's name is never given again
    text = path.read_text()
    assert door_key not in text and admin_key not in text and key_digest(admin_key) in text
    assert (path.stat().st_mode & 0o777) == 0o600
    # a damaged file refuses its keys (it does not open the server); fixed, they work again
    good = path.read_bytes()
    path.write_text("{not json")
    assert ring.principal(admin_key) is None
    path.write_bytes(good)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1000))
    assert ring.principal(admin_key) == Principal("boss", "admin")
    # every key revoked: still locked, never open
    keys.revoke("boss")
    assert ring.required and ring.principal(admin_key) is None and ring.principal("") is None


def test_plain_and_environment_keys(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        api_keys=["plain-one", "plain-two"],
        access_keys=[
            {"name": "cam", "role": "viewer", "galleries": ["lobby"], "sha256": key_digest("cam-key")}
        ],
    )
    ring = KeyRing.from_settings(settings)
    assert ring.principal("plain-two") == Principal("api-key-2", "admin")
    assert ring.principal("cam-key") == Principal("cam", "viewer", frozenset({"lobby"}))
    assert ring.principal("plain-three") is None


def test_audit_records_hold_only_their_fields(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, keep_days=30)
    with pytest.raises(ValueError):
        trail.write({"key": "k", "embedding": [0.1]})
    trail.write({"key": "k", "subjects": trail.pseudonyms(["Ann"])}, at=time.time() - 40 * 86_400)
    trail.write({"key": "k", "subjects": trail.pseudonyms(["Ann"])})
    secret = load_secret(tmp_path, create=False)
    assert secret is not None and (tmp_path / "pseudonyms.key").stat().st_mode & 0o777 == 0o600
    files = sorted(p.name for p in tmp_path.glob("audit-*.jsonl"))
    assert len(files) == 2
    assert [p.name for p in trail.prune()] == files[:1]  # older than 30 days: erased
    [line] = (tmp_path / files[1]).read_text().splitlines()
    assert json.loads(line)["subjects"] == [pseudonym(secret, "Ann")] and "Ann" not in line


# --- the server ---


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("access_data")


@pytest.fixture(scope="module")
def keys(data_dir: Path) -> dict[str, str]:
    """name -> key, made with the key file API before the server starts."""
    made = {}
    for name, (role, galleries) in KEYS.items():
        _, made[name] = KeyFile(data_dir / "keys.json").create(name, role, galleries)  # type: ignore[arg-type]
    return made


@pytest.fixture(scope="module")
def server(models_dir: Path, data_dir: Path, keys: dict[str, str], tmp_path_factory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("access_server")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_DATA_DIR": str(data_dir),
        "FACEREST_LOG_LEVEL": "debug",  # nothing, not even debug lines, may hold a key
        "FACEREST_VIDEO_STREAMS_ENABLED": "true",
        "FACEREST_VIDEO_STREAM_ALLOWLIST": "127.0.0.1",
        "FACEREST_VIDEO_STREAM_RETRIES": "0",
        "FACEREST_COMPREFACE_ENABLED": "true",
        "FACEREST_DEEPSTACK_ENABLED": "true",
    }
    srv = start_server(env, log_dir / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


def principal(name: str) -> Principal:
    role, galleries = KEYS[name]
    return Principal(name, role, None if galleries is None else frozenset(galleries))  # type: ignore[arg-type]


def missing_for(name: str, spec: Rule, gallery: str | None) -> str | None:
    """What the rule should find missing for key `name`. A `key` rule's gallery is the key's own:
    its one gallery, else FACEREST_COMPAT_GALLERY ("default") for a key of every gallery or of
    several that include it; a key of several others has none (refused)."""
    who = principal(name)
    if spec.gallery != KEY:
        return who.missing(spec.action, gallery)
    scope = who.galleries
    if scope is None or "default" in scope:
        own = "default"
    elif len(scope) == 1:
        own = next(iter(scope))
    else:
        return "scoped to one gallery"
    return who.missing(spec.action, own)


def body_for(path: str, gallery: str | None) -> dict[str, Any]:
    """httpx arguments of a request to a route whose gallery is in its body: a body naming it."""
    if path == "/verify":
        return {"json": {"gallery": gallery, "subject": "s", "embeddings": [[0.1] * 512]}}
    if path == "/video/extract":
        return {"json": {"url": "http://127.0.0.1:9/v.mp4", "gallery": gallery}}
    if path == "/multipart/video/extract":
        return {"files": {"file": ("v.mp4", b"not a video")}, "data": {"gallery": gallery}}
    if path == "/video/jobs":
        return {"json": {"url": "http://127.0.0.1:9/cam", "gallery": gallery}}
    raise AssertionError(f"{path}'s rule takes its gallery from the body: add a body for it here")


def test_every_route_answers_every_role_as_its_rule_says(server: Server, keys: dict[str, str]) -> None:
    """The whole matrix: route x (no key, each role, a key scoped to gallery A) x gallery A or B."""
    wrong = []
    checked = 0
    params = {
        "subject": "s",
        "face_id": "1",
        "image_id": "1",
        "review_id": "1",
        "job_id": "0" * 32,
        "name": "demo.js",
    }
    with server.client() as client:
        for method, path, [rule] in [r for r in routes() if r[2]]:
            galleries = ["A", "B"] if rule.gallery not in (None, KEY) else [None]
            for gallery in galleries:
                url = path.format(**params, gallery=gallery)
                extra = body_for(path, gallery) if rule.gallery == BODY else {}
                if not extra and method in ("POST", "PATCH", "PUT"):
                    extra = {"json": {}}
                names = [None, "viewer", "operator", "admin", "scoped"]
                for name in names + (["door"] if rule.gallery == KEY else []):
                    headers = {} if name is None else {"X-API-Key": keys[name]}
                    status = client.request(method, url, headers=headers, **extra).status_code
                    answer = f"{method} {url} as {name}: {status}"
                    checked += 1
                    if rule.action == PUBLIC:
                        if status in (401, 403):
                            wrong.append(answer + " (public)")
                        continue
                    if name is None:
                        if status != 401:
                            wrong.append(answer + " (no key: 401)")
                        continue
                    spec = documented()[(method, path)]  # what the route should do, not what it says
                    missing = missing_for(name, spec, gallery)
                    if (status == 403) != (missing is not None) or status == 401:
                        wrong.append(answer + f" (expected {'403: ' + missing if missing else 'not 403'})")
    assert checked > 150
    assert not wrong, "\n".join(wrong)


def test_a_refusal_names_what_is_missing_and_does_nothing(server: Server, keys: dict[str, str]) -> None:
    enrol = {"embeddings": [np.random.default_rng(1).standard_normal(512).tolist()]}
    with server.client() as client:
        refused = client.post(
            "/gallery/staff/subjects/x/faces", json=enrol, headers={"X-API-Key": keys["viewer"]}
        )
        assert refused.status_code == 403
        assert refused.json() == {
            "detail": "the 'enrol' action needs the operator role; key 'viewer' is a viewer",
            "code": "forbidden",
        }
        other = client.post(
            "/gallery/visitors/subjects/x/faces", json=enrol, headers={"X-API-Key": keys["scoped"]}
        )
        assert other.json() == {
            "detail": "key 'scoped' may not touch gallery 'visitors'",
            "code": "forbidden",
        }
        # nothing was made by either
        listed = client.get("/galleries", headers={"X-API-Key": keys["admin"]}).json()["galleries"]
        assert [g["name"] for g in listed] == []
    # the Python client raises it as its own error, with the detail
    with (
        Client(server.url, api_key=keys["scoped"]) as facerest_client,
        pytest.raises(Forbidden, match="visitors"),
    ):
        facerest_client.delete_subject("visitors", "x")


def test_listings_show_only_what_the_key_may_see(server: Server, keys: dict[str, str]) -> None:
    rng = np.random.default_rng(2)
    with server.client() as client:
        for gallery in ("staff", "visitors"):
            body = {"embeddings": [rng.standard_normal(512).tolist()]}
            added = client.post(
                f"/gallery/{gallery}/subjects/Kim/faces", json=body, headers={"X-API-Key": keys["admin"]}
            )
            assert added.status_code == 200, added.text

        def listed(name: str) -> list[str]:
            answer = client.get("/galleries", headers={"X-API-Key": keys[name]})
            return [g["name"] for g in answer.json()["galleries"]]

        assert listed("admin") == listed("viewer") == ["staff", "visitors"]
        assert listed("door") == listed("scoped") == ["staff"]
        # a viewer reads a subject, but taking its embeddings out is an export: an operator's
        view = {"X-API-Key": keys["viewer"]}
        assert client.get("/gallery/staff/subjects/Kim", headers=view).status_code == 200
        export = client.get("/gallery/staff/subjects/Kim", params={"embeddings": True}, headers=view)
        assert (
            export.status_code == 403 and "'export' action needs the operator role" in export.json()["detail"]
        )
        operate = {"X-API-Key": keys["operator"]}
        assert (
            "embedding"
            in client.get("/gallery/staff/subjects/Kim", params={"embeddings": True}, headers=operate).json()[
                "faces"
            ][0]
        )


def test_stream_jobs_belong_to_the_key_that_made_them(server: Server, keys: dict[str, str]) -> None:
    def as_(name: str) -> dict[str, str]:
        return {"X-API-Key": keys[name]}

    with server.client() as client:
        made = client.post("/video/jobs", json={"url": "http://127.0.0.1:9/cam"}, headers=as_("operator"))
        assert made.status_code == 201, made.text
        job = made.json()["id"]
        assert made.json()["owner"] == "operator"
        assert [j["id"] for j in client.get("/video/jobs", headers=as_("operator")).json()["jobs"]] == [job]
        # another key: no such job, whatever it tries
        assert client.get("/video/jobs", headers=as_("operator2")).json()["jobs"] == []
        assert client.get(f"/video/jobs/{job}", headers=as_("operator2")).status_code == 404
        assert client.get(f"/video/jobs/{job}/events", headers=as_("operator2")).status_code == 404
        assert client.delete(f"/video/jobs/{job}", headers=as_("operator2")).status_code == 404
        assert client.get("/video/jobs", headers=as_("viewer")).status_code == 403  # no streams for viewers
        # an admin sees every job and who made it
        listed = client.get("/video/jobs", headers=as_("admin")).json()["jobs"]
        assert [(j["id"], j["owner"]) for j in listed] == [(job, "operator")]
        assert client.delete(f"/video/jobs/{job}", headers=as_("operator")).status_code == 200
        assert client.get("/video/jobs", headers=as_("admin")).json()["jobs"] == []


def test_the_audit_trail_says_who_searched_for_a_subject(
    server: Server, keys: dict[str, str], data_dir: Path
) -> None:
    """Two keys search for Yao; `facerest audit --subject` lists exactly those searches (and the
    enrolment), and the trail holds no image, embedding, key or name."""
    photo = b64(YAO)
    rng = np.random.default_rng(3)
    with server.client() as client:
        enrolled = client.post(
            "/gallery/staff/subjects/Yao Audit/faces",
            json={"images": {"data": [photo]}},
            headers={"X-API-Key": keys["operator"], "X-Request-ID": "audit-enrol"},
        )
        assert enrolled.status_code == 200 and len(enrolled.json()["added"]) == 1, enrolled.text
        face_id = enrolled.json()["added"][0]["face_id"]
        # a stranger's embedding: no one named, Yao at most a candidate
        stranger = client.post(
            "/gallery/staff/search",
            json={"embeddings": [rng.standard_normal(512).tolist()]},
            headers={"X-API-Key": keys["viewer"], "X-Request-ID": "audit-stranger"},
        )
        assert stranger.json()["data"][0]["faces"][0]["subject"] is None
        for name in ("viewer", "door"):
            found = client.post(
                "/gallery/staff/search",
                json={"images": {"data": [photo]}},
                headers={"X-API-Key": keys[name], "X-Request-ID": f"audit-search-{name}"},
            )
            assert found.json()["data"][0]["faces"][0]["subject"] == "Yao Audit", found.text
        # refused: the scoped key on another gallery
        refused = client.post(
            "/gallery/visitors/search",
            json={"images": {"data": [photo]}},
            headers={"X-API-Key": keys["door"], "X-Request-ID": "audit-refused"},
        )
        assert refused.status_code == 403
    env = {"FACEREST_DATA_DIR": str(data_dir)}
    time.sleep(0.2)  # records are written once the answer has gone out
    searches = run_cli(env, "audit", "--subject", "Yao Audit", "--action", "search", "--json", timeout=120)
    assert searches.returncode == 0, searches.stderr
    found = [json.loads(line) for line in searches.stdout.splitlines()]
    assert [(r["key"], r["role"], r["request_id"], r["outcome"]) for r in found] == [
        ("viewer", "viewer", "audit-search-viewer", "ok"),
        ("door", "viewer", "audit-search-door", "ok"),
    ]
    assert all(r["subjects"] == ["Yao Audit"] and r["gallery"] == "staff" for r in found)
    everything = run_cli(env, "audit", "--subject", "Yao Audit", timeout=120)
    lines = everything.stdout.splitlines()
    assert [line.split("\t")[-1] for line in lines] == [
        "audit-enrol",
        "audit-search-viewer",
        "audit-search-door",
    ]
    assert f"faces {face_id}" in lines[0] and "\tenrol\t" in lines[0]
    # the stranger's search only listed Yao as a candidate: it shows with --candidates
    wider = run_cli(
        env, "audit", "--subject", "Yao Audit", "--candidates", "--action", "search", "--json", timeout=120
    )
    assert "audit-stranger" in [json.loads(line)["request_id"] for line in wider.stdout.splitlines()]
    refusals = run_cli(env, "audit", "--outcome", "refused", "--key", "door", "--json", timeout=120)
    [record] = [json.loads(line) for line in refusals.stdout.splitlines() if "audit-refused" in line]
    assert record["missing"] == "key 'door' may not touch gallery 'visitors'" and record["status"] == 403
    # what the files hold: the planned fields, no image, no embedding, no name, no key
    text = "".join(p.read_text() for p in sorted((data_dir / "audit").glob("audit-*.jsonl")))
    assert photo[1000:1060] not in text and "Yao Audit" not in text
    assert not any(key in text for key in keys.values())
    for line in text.splitlines():
        record = json.loads(line)
        assert set(record) <= FIELDS, record
        for field in ("subjects", "candidates"):
            assert all(isinstance(s, str) and len(s) == 24 for s in record.get(field) or [])
        assert all(isinstance(f, int) for f in record.get("faces") or [])


def test_keys_are_never_kept_or_logged_in_clear(server: Server, keys: dict[str, str], data_dir: Path) -> None:
    with server.client() as client:
        for key in keys.values():  # every key used, also wrongly, also as a bearer token
            client.get("/info", headers={"X-API-Key": key})
            client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
            client.get("/info", headers={"X-API-Key": key + "-wrong"})
    server.log_once_it_has("GET /metrics")
    for path in [*data_dir.rglob("*"), server.log_path]:
        if path.is_file():
            content = path.read_bytes()
            leaked = [name for name, key in keys.items() if key[4:].encode() in content]
            assert not leaked, f"{path} holds the keys of {leaked}"


# --- a revoked key, several workers ---


def test_a_revoked_key_is_refused_at_once_by_every_worker(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = tmp_path_factory.mktemp("revoke_data")
    _, key = KeyFile(data / "keys.json").create("camera", "viewer")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_DATA_DIR": str(data),
        "FACEREST_WORKERS": "2",
        "FACEREST_REC_NAME": "",  # two workers on two cores: detector only
    }
    server = start_server(env, tmp_path_factory.mktemp("revoke_server") / "server.log")
    clients: dict[int, httpx.Client] = {}  # worker pid -> a kept-alive connection to it
    try:
        for attempt in range(60):  # new connections until each worker holds one
            client = server.client(headers={"X-API-Key": key})
            rid = f"revoke-probe-{attempt}"
            assert client.get("/galleries", headers={"X-Request-ID": rid}).status_code == 200
            pid = worker_of(data, rid)
            if pid in clients:
                client.close()
            else:
                clients[pid] = client
            if len(clients) == 2:
                break
        assert len(clients) == 2, "the connections never reached the second worker"
        revoked = run_cli({"FACEREST_DATA_DIR": str(data)}, "keys", "revoke", "camera", timeout=120)
        assert revoked.returncode == 0, revoked.stderr
        for pid, client in clients.items():  # the same connections, so the same workers
            answer = client.get("/galleries")
            assert answer.status_code == 401, f"worker {pid} still accepts the revoked key"
            assert client.get("/health").status_code == 200  # it is the same, live worker
    finally:
        for client in clients.values():
            client.close()
        stop_server(server)


def worker_of(data: Path, request_id: str, timeout_s: float = 5.0) -> int:
    """The pid of the worker that answered `request_id`, from its audit record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in (data / "audit").glob("audit-*.jsonl"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("request_id") == request_id:
                    return int(record["pid"])
        time.sleep(0.05)
    raise AssertionError(f"no audit record of {request_id}")
