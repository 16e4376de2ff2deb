"""``AnswerCache``: the polled answers, computed once per state of the run store.

A run page's script polls four API routes every 1.5 s and reloads the page when a round
is committed; 50 people watching a run would make the dashboard run the same queries,
validation and rendering 130 times a second, on the machine whose CPU the coordinator's
rounds need. This ASGI middleware (inside the token gate: only admitted requests reach
it) answers a GET of those routes from the answer it last computed for the same request
while the store has not changed:

- the store's state is ``store_stamp`` (dashboard/queries.py): one read of small
  aggregates that changes with every write the coordinator or the CLI makes (a run
  created, finished or resumed, a round opened, committed or aborted, an evaluation or
  an event added). It is read again at most every ``stamp_max_age_s`` (0.5 s), so an
  answer is at most that much older than the store, and the store is read at most twice
  a second for the stamp, however many clients poll;
- requests that arrive together for an answer not computed yet wait for the one
  computation in progress instead of each running it;
- only 200 answers are kept (the last ``kept``, least recently used first out), keyed by
  path, query, Host and whether JSON was asked for; any other method (an annotation's
  PUT) empties the cache and starts a new generation of keys, before and after it, so no
  answer computed before the write ends is served after it (tags and notes are not part
  of the stamp).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.auth import wants_json

# What the run page and its script poll, and the runs list.
POLLED = re.compile(
    r"^/(?:api/runs(?:/[^/]+(?:/(?:rounds|clients|evaluations))?)?"
    r"|runs/[^/]+(?:/plots/[a-z]+\.svg)?)?$"
)

Stamp = Callable[[Scope], Hashable]
"""The store's current state (blocking: called in a worker thread); raises if unreadable."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class AnswerCache:
    def __init__(self, app: ASGIApp, *, stamp: Stamp, stamp_max_age_s: float = 0.5,
                 kept: int = 256) -> None:
        self.app = app
        self.stamp = stamp
        self.stamp_max_age_s = stamp_max_age_s
        self.kept = kept
        self.answers: OrderedDict[Hashable, Answer] = OrderedDict()
        self.pending: dict[Hashable, asyncio.Future[Answer | None]] = {}
        self._stamp: tuple[float, Hashable] | None = None  # (read at, value)
        self._stamp_read: asyncio.Future[Hashable] | None = None
        self.computed = 0  # answers computed by the app (the rest came from here)
        self.writes = 0  # this dashboard's own writes: each starts a new generation

    def _written(self) -> None:
        self.writes += 1
        self.answers.clear()
        self._stamp = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            self._written()
            try:
                await self.app(scope, receive, send)
            finally:  # and after it: what was computed meanwhile is not served either
                self._written()
            return
        if scope["method"] != "GET" or not POLLED.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            stamp = await self._current_stamp(scope)
        except Exception:  # noqa: BLE001 - the store is unreadable: the app says so (503)
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        key = (self.writes, stamp, scope["path"], scope.get("query_string", b""),
               headers.get(b"host"), wants_json(scope))
        answer = self.answers.get(key)
        if answer is None:
            answer = await self._compute(key, scope, receive, send)
            if answer is None:  # not kept: already sent as the app made it
                return
        else:
            self.answers.move_to_end(key)
        await _send(answer, send)

    async def _current_stamp(self, scope: Scope) -> Hashable:
        now = time.monotonic()
        if self._stamp is not None and now - self._stamp[0] < self.stamp_max_age_s:
            return self._stamp[1]
        if self._stamp_read is not None:  # another request is reading it: wait for that
            return await asyncio.shield(self._stamp_read)
        self._stamp_read = asyncio.get_running_loop().create_future()
        try:
            value = await run_in_threadpool(self.stamp, scope)
        except BaseException as exc:
            self._stamp_read.set_exception(exc)
            self._stamp_read.exception()  # retrieved: no "never retrieved" warning
            raise
        else:
            self._stamp_read.set_result(value)
            self._stamp = (now, value)
            return value
        finally:
            self._stamp_read = None

    async def _compute(self, key: Hashable, scope: Scope, receive: Receive,
                       send: Send) -> Answer | None:
        """The app's answer for ``key``, computed once for all who ask at the same time;
        None if it is not kept (the app's answer went out to this client directly)."""
        if (pending := self.pending.get(key)) is not None:
            answer = await asyncio.shield(pending)
            if answer is not None:
                return answer
        future = self.pending[key] = asyncio.get_running_loop().create_future()
        answer = None
        try:
            answer = await self._run_app(scope, receive, send)
            if answer is not None:
                self.answers[key] = answer
                while len(self.answers) > self.kept:
                    self.answers.popitem(last=False)
        finally:
            future.set_result(answer)
            if self.pending.get(key) is future:
                del self.pending[key]
        return answer

    async def _run_app(self, scope: Scope, receive: Receive, send: Send) -> Answer | None:
        """Run the app, holding its answer; a 200 is returned to be kept (and sent by the
        caller), anything else is sent on as it comes."""
        start: Message | None = None
        chunks: list[bytes] = []
        passing = False

        async def hold(message: Message) -> None:
            nonlocal start, passing
            if message["type"] == "http.response.start":
                start = message
                passing = message["status"] != 200
                if passing:
                    await send(message)
            elif passing:
                await send(message)
            else:
                chunks.append(message.get("body", b""))

        self.computed += 1
        await self.app(scope, receive, hold)
        if start is None or passing:
            return None
        return Answer(start["status"], list(start.get("headers", [])), b"".join(chunks))


async def _send(answer: Answer, send: Send) -> None:
    await send({"type": "http.response.start", "status": answer.status,
                "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body})
