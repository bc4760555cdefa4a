"""The two error families of the package and their wire form between Triton and the frontend.

Triton's streaming gRPC response carries an error as a bare string (no status code), and an ensemble prefixes
the composing model's message with its own text. So a client error is encoded as a tagged JSON object inside
the message, which the frontend finds again wherever it sits in the string.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

_TAG = "nanovl-error:"
_TAG_RE = re.compile(re.escape(_TAG) + r"(\{.*\})", re.DOTALL)


class NanoVLError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_wire(self) -> str:
        """The message a Triton model raises: human-readable text plus the tagged payload."""
        body = {"status": self.status, "type": self.type, "message": self.message,
                "param": self.param, "code": self.code}
        return f"{self.message} {_TAG}{json.dumps(body)}"


class ClientError(NanoVLError):
    """The request cannot be served as sent (HTTP 400 unless a subclass says otherwise)."""

    status = 400
    type = "invalid_request_error"


class ServerError(NanoVLError):
    """Something on our side failed; the request may succeed later."""

    status = 500
    type = "internal_error"


@dataclass(frozen=True)
class WireError:
    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None


def from_wire(text: str) -> WireError:
    """Recover an error raised by a model; an untagged message is a server error carrying the raw text."""
    match = _TAG_RE.search(text)
    if match:
        try:
            body = json.loads(match.group(1))
            return WireError(int(body["status"]), str(body["type"]), str(body["message"]),
                             body.get("param"), body.get("code"))
        except (ValueError, KeyError, TypeError):
            pass
    return WireError(500, "internal_error", text)
