"""Who may do what (issue 30): keys with roles and gallery scopes, and the audit trail.

`roles` says which role may do which action; `keys` stores keys hashed and turns a presented key
into a `Principal`; `audit` writes and reads the append-only trail. The HTTP side (one dependency
per route that checks a rule and records the request) is facerest/api/access.py.
"""
