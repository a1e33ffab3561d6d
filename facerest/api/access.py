"""Access in one place: every route declares its rule once, `Depends(allow(action, gallery=...))`.

The middleware turns the presented key (X-API-Key, or Authorization: Bearer) into a `Principal`
(facerest/access/keys.py) or answers 401; the route's rule then checks the principal's role for
the action and its galleries for the gallery the request names, answers 403 naming what is
missing, and leaves a `Grant` on the request. The route adds what it touched (subjects, face ids);
when the answer has gone out the middleware calls `Access.finish`, which writes the audit record
with the real outcome. Nothing else in the API decides who may do what: a route without a rule
fails tests/test_access.py, which walks `app.routes`.

Where the gallery comes from: `gallery="gallery"` names the path parameter; `gallery=BODY` says
the body names it (or may), and the route calls `grant.use_gallery(name)` once it has parsed the
body; `gallery=KEY` says the key itself names it (the CompreFace and DeepStack APIs of issue 31,
whose clients know one service per key: `key_gallery`). A route may also ask for a stronger action
for part of what it does (`grant.require`).

The compatibility APIs answer a missing or wrong key in their own error shape: the middleware lets
requests under their prefixes through without a principal (`Access.keys_checked_by_rule`), and the
rule answers 401 here. DeepStack's key comes in a form field: its routes read the form first and
hand the key to `Access.use_key`, which looks it up in the same key ring.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import Scope

from facerest.access.audit import AuditTrail
from facerest.access.keys import KeyRing
from facerest.access.roles import ACTIONS, AUDITED, PUBLIC, Principal
from facerest.api.errors import ERROR_CODE_KEY
from facerest.config import Settings
from facerest.errors import Forbidden, Unauthorized
from facerest.logs import request_id

PRINCIPAL_KEY = "facerest.principal"
GRANT_KEY = "facerest.grant"
#: the rule's gallery is named in the body: the route calls `grant.use_gallery` after parsing it
BODY = "<body>"
#: the rule's gallery is the one the key is scoped to (`key_gallery`): the compatibility APIs
KEY = "<key>"


@dataclass(frozen=True, slots=True)
class Rule:
    action: str
    gallery: str | None = None  # a path parameter's name, BODY, or None (no gallery)


@dataclass(slots=True)
class Grant:
    """What one request was allowed to do, and what it touched (for its audit record)."""

    principal: Principal
    rule: Rule
    method: str
    route: str
    request_id: str
    action: str = ""
    gallery: str | None = None
    subjects: set[str] = field(default_factory=set)
    candidates: set[str] = field(default_factory=set)
    faces: list[int] = field(default_factory=list)
    refused: str | None = None
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.action = self.action or self.rule.action

    def require(self, action: str, gallery: str | None = None) -> None:
        """Forbidden, naming what is missing, unless the principal may do `action` (to `gallery`)."""
        missing = self.principal.missing(action, gallery)
        if missing is not None:
            self.action, self.refused = action, missing
            if gallery is not None:
                self.gallery = gallery
            raise Forbidden(missing)

    def use_gallery(self, gallery: str, action: str | None = None) -> None:
        """The request touches `gallery` (named in its body), for `action` (default: the rule's)."""
        self.require(action or self.action, gallery)
        self.action = action or self.action
        self.gallery = gallery

    def touched(
        self, subjects: Iterable[str] = (), faces: Iterable[int] = (), candidates: Iterable[str] = ()
    ) -> None:
        self.subjects.update(subjects)
        self.faces.extend(faces)
        self.candidates.update(candidates)

    def sees(self, gallery: str) -> bool:
        """Whether a listing shows `gallery` to this request's key."""
        return self.principal.may_touch(gallery)

    @property
    def audited(self) -> bool:
        """Refusals, everything that touched a gallery, and the audited actions that need none
        (the list of galleries); not a body that named no gallery (verify of two images)."""
        if self.refused is not None or self.gallery is not None:
            return True
        return self.action in AUDITED and self.rule.gallery != BODY


class Access:
    """One per app: the keys it accepts and the trail it writes."""

    def __init__(self, settings: Settings) -> None:
        self.keys = KeyRing.from_settings(settings)
        self.trail = AuditTrail.from_settings(settings)
        #: the gallery of a `gallery=KEY` rule for a key of every gallery (FACEREST_COMPAT_GALLERY)
        self.key_default_gallery = settings.compat_gallery
        #: path prefixes whose requests reach their route without a principal: its rule answers the
        #: 401 (in the other API's error shape), or finds the key in the body first
        self.rule_checks_key: tuple[str, ...] = ()

    def keys_checked_by_rule(self, prefix: str) -> None:
        """Requests under `prefix` get their 401 from the route's rule, not from the middleware."""
        self.rule_checks_key = (*self.rule_checks_key, prefix)

    def passes_without_key(self, path: str) -> bool:
        return path.startswith(self.rule_checks_key) if self.rule_checks_key else False

    def principal(self, headers: Headers) -> Principal | None:
        return self.keys.principal(presented_key(headers))

    def use_key(self, scope: Scope, key: str) -> Principal:
        """A key found in the body (DeepStack's `api_key` form field) replaces the header's:
        looked up in the same key ring; Unauthorized (recorded) when it is wrong or revoked."""
        principal = self.keys.principal(key)
        if principal is None:
            self.refused_key(scope)
            raise Unauthorized("this API key is not valid")
        scope[PRINCIPAL_KEY] = principal
        return principal

    def refused_key(self, scope: Scope) -> None:
        """A request without a valid key: recorded (no name, no route: it was never routed)."""
        self.trail.write(
            {
                "key": None,
                "role": None,
                "action": None,
                "method": scope.get("method"),
                "request_id": request_id.get(),
                "outcome": "unauthorized",
                "status": 401,
            }
        )

    def finish(self, scope: Scope, status: int) -> None:
        """After the answer: the request's audit record, when its action is audited or refused."""
        grant: Grant | None = scope.get(GRANT_KEY)
        if grant is None or not grant.audited:
            return
        if grant.refused is not None:
            outcome = "refused"
        elif status < 400:
            outcome = "ok"
        else:
            outcome = scope.get(ERROR_CODE_KEY) or str(status)
        try:
            self._write(grant, status, outcome)
        except OSError as exc:  # e.g. a read-only data folder: the request is answered regardless
            self.trail.failed(exc)

    def _write(self, grant: Grant, status: int, outcome: str) -> None:
        record: dict[str, Any] = {
            "key": grant.principal.name,
            "role": grant.principal.role,
            "action": grant.action,
            "method": grant.method,
            "route": grant.route,
            "gallery": grant.gallery,
            "subjects": self.trail.pseudonyms(grant.subjects),
            "candidates": self.trail.pseudonyms(grant.candidates - grant.subjects),
            "faces": sorted(set(grant.faces)),
            "request_id": grant.request_id,
            "outcome": outcome,
            "status": status,
        }
        if grant.refused is not None:
            record["missing"] = grant.refused
        self.trail.write(record, at=grant.started)


def presented_key(headers: Headers) -> str:
    """`X-API-Key: <key>`, or `Authorization: Bearer <key>` (what Prometheus scrapers can send)."""
    key = headers.get("x-api-key")
    if key is not None:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def principal_of(request: Request) -> Principal:
    principal: Principal | None = request.scope.get(PRINCIPAL_KEY)
    if principal is None:
        # a route of a prefix whose keys the rule checks (Access.keys_checked_by_rule), without a
        # valid key: recorded as the middleware records it, answered 401 in the route's shape
        access: Access | None = getattr(request.app.state, "access", None)
        route = getattr(request.scope.get("route"), "path", "")
        if access is not None and access.passes_without_key(route):
            access.refused_key(request.scope)
            raise Unauthorized("a valid API key is required")
        raise Forbidden("this route needs a key, and none was checked")
    return principal


def key_gallery(principal: Principal, default: str) -> str:
    """The one gallery a `gallery=KEY` rule reaches: the only gallery of a key scoped to one; for a
    key of every gallery (an admin's, a plain FACEREST_API_KEYS one, everyone on a server without
    keys), `default` (FACEREST_COMPAT_GALLERY), as for a key of several galleries that include it.
    A key of several galleries without it has no one gallery: Forbidden."""
    if principal.galleries is None:
        return default
    if len(principal.galleries) == 1:
        return next(iter(principal.galleries))
    if default in principal.galleries:
        return default
    raise Forbidden(
        f"key {principal.name!r} may touch {len(principal.galleries)} galleries and not "
        f"{default!r}: the CompreFace and DeepStack APIs need a key scoped to one gallery"
    )


def allow(action: str, gallery: str | None = None) -> Callable[[Request], Awaitable[Grant]]:
    """The rule of one route: the action it does and where the gallery it touches is named.

    Use in the route's signature when the route reads the grant (`grant: Grant =
    Depends(allow("search", gallery="gallery"))`), else in its decorator (`dependencies=[...]`)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: add it to facerest/access/roles.py ACTIONS")
    rule = Rule(action, gallery)

    # a coroutine, so FastAPI runs it on the event loop: a plain function would take a worker
    # thread per request (300 event-stream listeners arriving together took 13) for a key lookup
    # of one stat() (the audit record is written after the answer, by the middleware)
    async def check(request: Request) -> Grant:
        route = request.scope.get("route")
        grant = Grant(
            principal_of(request),
            rule,
            request.method,
            getattr(route, "path", "?"),
            request_id.get(),
        )
        request.scope[GRANT_KEY] = grant
        if gallery == KEY:
            try:
                named = key_gallery(grant.principal, request.app.state.access.key_default_gallery)
            except Forbidden as exc:
                grant.refused = exc.detail
                raise
        else:
            named = None if gallery in (None, BODY) else request.path_params.get(gallery)  # type: ignore[arg-type]
        grant.require(action, named)
        grant.gallery = named
        return grant

    check.rule = rule  # type: ignore[attr-defined]  # read by tests/test_access.py
    return check


def public() -> Callable[[], Awaitable[None]]:
    """The rule of a route that needs no key (its path is open in the middleware too)."""

    async def open_route() -> None:
        return None

    open_route.rule = Rule(PUBLIC)  # type: ignore[attr-defined]
    return open_route


def rule_of(dependencies: Iterable[Any]) -> list[Rule]:
    """The rules among a route's dependencies (`route.dependant.dependencies`)."""
    return [dep.call.rule for dep in dependencies if isinstance(getattr(dep.call, "rule", None), Rule)]
