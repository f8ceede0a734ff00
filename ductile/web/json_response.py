"""
JSON response bodies shaped like Go's C{json.Encoder} output.

Go ductile answers with C{json.NewEncoder(w).Encode(v)}: compact JSON, the
characters C{<}, C{>}, C{&}, U+2028 and U+2029 escaped as C{\\uXXXX}, other
non-ASCII written as UTF-8, and a trailing newline.  A Go sender only looks
at the C{error} field, but keeping the exact shape makes our answers
byte-identical to a Go receiver's for the same input.
"""
from __future__ import annotations

import json
from typing import Any

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPE_TABLE = str.maketrans(_GO_ESCAPES)

CONTENT_TYPE = b"application/json"


def encode_json(obj: Any) -> bytes:
    """
    Encode C{obj} as Go's C{json.Encoder} would (dict order is kept, as Go
    keeps struct field order).
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # The escaped characters can only occur inside JSON strings, so a plain
    # translation of the serialised text is exact.
    return (text.translate(_GO_ESCAPE_TABLE) + "\n").encode("utf-8", "replace")


def error_body(message: str) -> bytes:
    """C{{"error":"<message>"}\\n}."""
    return encode_json({"error": message})


def write_json(request: Any, code: int, obj: Any) -> bytes:
    """
    Set C{code} and the JSON content type on C{request} and return the body,
    ready to be returned from a C{render_*} method or written.
    """
    body = encode_json(obj)
    request.setResponseCode(code)
    request.setHeader(b"content-type", CONTENT_TYPE)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    return body


def write_error(request: Any, code: int, message: str) -> bytes:
    """L{write_json} of C{{"error": message}}."""
    return write_json(request, code, {"error": message})
