"""Roles, the actions a route may declare, and who a request acts as (its `Principal`).

Roles are ordered: viewer < operator < admin; each action names the least role that may do it,
and a higher role may do everything a lower one may. A key may also be limited to some galleries:
it then touches no other gallery, whatever its role, and listings show it only its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")

#: every action a route may declare, and the least role that may do it (docs/api.md has the table)
ACTIONS: dict[str, Role] = {
    # no gallery involved, nothing stored: the faces of the posted images or videos
    "extract": "viewer",
    "info": "viewer",  # /info: version, models, limits
    "metrics": "viewer",  # /metrics: counts by route and code, nothing about anyone
    # reading galleries
    "read": "viewer",  # galleries, subjects, faces, clusters and face pictures (without embeddings)
    "search": "viewer",  # 1:N
    "verify": "viewer",  # 1:1, also against a subject
    # changing what a gallery holds
    "enrol": "operator",
    "edit": "operator",  # rename, merge, move, a subject's picture, feedback
    "review": "operator",  # clustering unsorted faces, the review queue (its candidates' names too)
    "delete": "operator",  # faces and subjects, with everything kept about them
    # embeddings taken out of the server (a face's picture is `read`: the console shows faces to
    # viewers; the audit trail records every picture fetched, by face id)
    "export": "operator",
    "stream": "operator",  # live-stream jobs: a key sees and stops its own, an admin every one
    # the server itself
    "manage": "admin",  # create (PUT) and delete whole galleries
    "calibrate": "admin",
    "settings": "admin",
}

#: actions written to the audit trail (every refusal is written too, whatever its action)
AUDITED = frozenset({"read", "search", "verify", "enrol", "edit", "review", "delete", "export", "manage"})

#: the pseudo-action of routes that need no key (health, the docs, static pages)
PUBLIC = "public"


def rank(role: str) -> int:
    return ROLES.index(role)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the key's name (never the key), its role and its galleries.

    `galleries` None: every gallery. Other API modules (the compatibility APIs of issue 31, which
    map a service key to exactly one gallery) read `galleries` to know which one a key is bound to.
    """

    name: str
    role: Role
    galleries: frozenset[str] | None = None

    def may(self, action: str) -> bool:
        return rank(self.role) >= rank(ACTIONS[action])

    def may_touch(self, gallery: str) -> bool:
        return self.galleries is None or gallery in self.galleries

    @property
    def sees_everything(self) -> bool:
        """An admin of every gallery: listings are not filtered, every stream job is visible."""
        return self.role == "admin" and self.galleries is None

    def missing(self, action: str, gallery: str | None = None) -> str | None:
        """What this principal lacks for `action` on `gallery`, in words; None when nothing."""
        if not self.may(action):
            return (
                f"the {action!r} action needs the {ACTIONS[action]} role; key {self.name!r} is a {self.role}"
            )
        if gallery is not None and not self.may_touch(gallery):
            return f"key {self.name!r} may not touch gallery {gallery!r}"
        return None

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "galleries": None if self.galleries is None else sorted(self.galleries),
        }


#: who every request is when no key is configured anywhere (the behaviour before keys existed)
ANONYMOUS = Principal("anonymous", "admin")
