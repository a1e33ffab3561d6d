"""Response classes: orjson for JSON (numpy arrays serialised natively), msgpack."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from facerest.api.serialize import dumps


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def body_response(body: Any, *, binary: bool, status_code: int = 200) -> Response:
    media = "application/x-msgpack" if binary else "application/json"
    return Response(dumps(body, binary=binary), status_code=status_code, media_type=media)
