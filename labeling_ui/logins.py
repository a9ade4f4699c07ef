"""Login throttling: exponential back-off per user name and per client address, in front of Gradio's ``/login``.

    throttle = LoginThrottle()  # per user: 5 free failures, then 1 s, 2 s, ... up to 60 s; per address 20, 300 s
    app_kwargs = {"middleware": [Middleware(LoginGuard, throttle=throttle)]}

After ``free`` failed logins in a row, a user name (or address) must wait ``base * 2**(failures -
free)`` seconds, at most ``cap``, before the next try is even checked: a guess made too early is
answered 429 without looking at the password, so it costs the guesser time and learns nothing. The
wait never exceeds ``cap``, so the real user is never locked out for longer than that, and a
successful login clears the user's failures. Failures are forgotten ``forget`` seconds after the
last one. The per-address limit is looser (everyone behind one proxy shares an address).
Throttling is per server process, in memory; a restart starts afresh.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

logger = logging.getLogger("labeling_ui")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
MAX_LOGIN_BODY = 64 * 1024  # a login form is a name and a password


@dataclass(frozen=True)
class Backoff:
    free: int  # failures allowed before any wait
    base: float  # seconds to wait after the first failure past ``free``; doubles with each further one
    cap: float  # the longest wait
    forget: float  # failures are forgotten this long after the last one

    def delay(self, failures: int) -> float:
        """Seconds the next try must wait after ``failures`` failures in a row."""
        if failures < self.free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - self.free, 60))


@dataclass
class _Record:
    failures: int
    last: float


class LoginThrottle:
    """Failed-login counts per key (``user:NAME``, ``addr:IP``) and the wait each imposes; thread-safe.

    A try is counted as a failure when it is let through (``attempt``) and taken back when it
    succeeds, so a burst of parallel guesses cannot all slip in before the first is answered.
    """

    MAX_KEYS = 100_000  # beyond this, forgotten records are dropped (names and addresses are attacker-chosen)

    def __init__(self, per_user: Backoff = Backoff(5, 1.0, 60.0, 900.0),
                 per_address: Backoff = Backoff(20, 1.0, 300.0, 900.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = {"user": per_user, "addr": per_address}
        self.clock = clock
        self.records: dict[str, _Record] = {}
        self.lock = threading.Lock()

    def attempt(self, user: str, address: str) -> float:
        """Seconds ``user`` must still wait at ``address``; 0 lets the try through, counted as a failure for now."""
        now = self.clock()
        with self.lock:
            wait = max(self._remaining(key, rule, now) for key, rule in self._keys(user, address))
            if wait > 0:
                return wait
            if len(self.records) >= self.MAX_KEYS:
                self._drop_forgotten(now)
            for key, rule in self._keys(user, address):
                record = self._live(key, rule, now)
                self.records[key] = _Record((record.failures if record else 0) + 1, now)
            return 0.0

    def succeeded(self, user: str, address: str) -> None:
        """The right password: the user's failures are cleared, and this try no longer counts against the address."""
        with self.lock:
            self.records.pop(f"user:{user}", None)
            record = self.records.get(f"addr:{address}")
            if record is not None:
                record.failures -= 1
                if record.failures <= 0:
                    del self.records[f"addr:{address}"]

    def failures(self, user: str, address: str) -> tuple[int, int]:
        """Failures in a row held against the user and against the address."""
        now = self.clock()
        with self.lock:
            by_user, by_address = (self._live(key, rule, now) for key, rule in self._keys(user, address))
        return (by_user.failures if by_user else 0, by_address.failures if by_address else 0)

    def _keys(self, user: str, address: str) -> list[tuple[str, Backoff]]:
        return [(f"user:{user}", self.rules["user"]), (f"addr:{address}", self.rules["addr"])]

    def _live(self, key: str, rule: Backoff, now: float) -> _Record | None:
        record = self.records.get(key)
        return record if record is not None and now - record.last < rule.forget else None

    def _remaining(self, key: str, rule: Backoff, now: float) -> float:
        record = self._live(key, rule, now)
        return 0.0 if record is None else max(0.0, record.last + rule.delay(record.failures) - now)

    def _drop_forgotten(self, now: float) -> None:
        longest = max(rule.forget for rule in self.rules.values())
        self.records = {key: r for key, r in self.records.items() if now - r.last < longest}


class LoginGuard:
    """ASGI middleware: a throttled ``POST /login`` gets 429 before Gradio checks it; outcomes feed the throttle.

    Gradio answers 200 for the right password, anything else is a failure. The guard reads the
    user name from the form (urlencoded from API clients, multipart from the browser) and the
    client address from the connection.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], throttle: LoginThrottle) -> None:
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ("/login", "/login/"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, MAX_LOGIN_BODY)
        if body is None:
            await JSONResponse({"detail": "login form too large"}, status_code=413)(scope, receive, send)
            return
        form = await Request(scope, _replay(body, receive)).form()
        user, address = str(form.get("username") or "").strip(), (scope.get("client") or ("unknown",))[0]
        wait = self.throttle.attempt(user, address)
        if wait > 0:
            logger.warning("login refused for %r from %s: too many failures, %.0f s to wait", user, address, wait)
            detail = f"Too many failed logins for this user or address; try again in {math.ceil(wait)} s."
            response = JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(math.ceil(wait))})
            await response(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, _replay(body, receive), watch)
        if status == [200]:
            self.throttle.succeeded(user, address)
        else:
            by_user, by_address = self.throttle.failures(user, address)
            logger.warning("failed login for %r from %s (%d in a row for the user, %d for the address)",
                           user, address, by_user, by_address)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if it is longer than ``limit``."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out the already-read ``body`` once, then waits on the connection as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
