"""Who may see the dashboard, and how a write action proves it came from its page.

- ``--auth USER:PASS`` (or ``TASKQ_DASHBOARD_AUTH``): HTTP Basic; a value without a colon
  is a bearer token (``Authorization: Bearer <token>``). Compared in constant time
  (``hmac.compare_digest`` over the whole header), so a wrong guess takes as long as a
  right one. ``/healthz`` is exempt: a liveness probe has no credentials.
- Every response forbids framing and loads scripts only from the dashboard itself, so
  another site can neither overlay the buttons nor inject a script into the page.
- Write actions are POST only and need :data:`CSRF_HEADER`: a cross-site form cannot set
  a header, and a cross-site script could only after a CORS preflight, which we never
  answer. A present ``Origin`` must also name this host.
"""

from __future__ import annotations

import base64
import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskq.errors import ConfigError

CSRF_HEADER = "x-taskq-action"
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"),
]


def expected_header(auth: str) -> bytes:
    """The exact ``Authorization`` value that ``--auth`` admits."""
    if not auth:
        raise ConfigError("--auth must be USER:PASS or a bearer token, not empty")
    if ":" in auth:
        user, _, password = auth.partition(":")
        if not user or not password:
            raise ConfigError("--auth must be USER:PASS with both parts non-empty")
        return b"Basic " + base64.b64encode(auth.encode())
    return b"Bearer " + auth.encode()


class AuthMiddleware:
    """Refuse requests without the credentials (401), and add the security headers."""

    def __init__(self, app: ASGIApp, auth: str | None, exempt: tuple[str, ...] = ("/healthz",)) -> None:
        self.app = app
        self.expected = expected_header(auth) if auth is not None else None
        self.basic = self.expected is not None and self.expected.startswith(b"Basic ")
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        path: str = scope.get("path", "")
        if self.expected is not None and not path.endswith(self.exempt):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self.expected):
                headers = [(b"content-type", b"text/plain; charset=utf-8")]
                if self.basic:
                    headers.append((b"www-authenticate", b'Basic realm="taskq", charset="UTF-8"'))
                await send_with_headers({"type": "http.response.start", "status": 401,
                                         "headers": headers})
                await send({"type": "http.response.body", "body": b"authentication required\n"})
                return
        await self.app(scope, receive, send_with_headers)


def action_refusal(request: Request, allow_actions: bool) -> tuple[int, str] | None:
    """Why a write action must be refused (status, message), or None to go ahead."""
    if not allow_actions:
        return 403, "read-only dashboard: start it with --allow-actions to retry or purge"
    if request.headers.get(CSRF_HEADER) != "1":
        return 403, f"missing {CSRF_HEADER} header: actions come from the dashboard page only"
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        return 403, "cross-origin action refused"
    return None
