"""Flower's SuperNode with a shorter poll interval: ``python -m fedmerge.deploy.supernode
--poll-interval S -- <flower-supernode arguments>``.

Flower 1.42's SuperNode (flwr/supernode/start_client_internal.py) sleeps 3 s whenever the
SuperLink has no message for it and 0.5 s between looks for the ClientApp's reply, with no
option to change either. A round sends each node two messages (train, evaluate), so those
sleeps were most of a deployment round here (docs/deployment.md: 9.1 s a round, of which
the work is under 1 s). This entry point runs the very same SuperNode with every sleep in
that module capped at ``--poll-interval``, backing off to ``--idle-poll-interval`` while no
message comes (an idle worker's cost); each poll is one small call to the SuperLink, so
hundreds of workers may want longer intervals than a handful.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fedmerge.deploy.object_pulls import shorten_object_pull_backoff

DEFAULT_POLL_S = 0.2


IDLE_SLEEP_S = 3.0  # what Flower's loop sleeps when the SuperLink had no message for it
DEFAULT_IDLE_POLL_S = 1.0
IDLE_GROWTH = 1.5
# Seconds after the last message during which an empty poll does not back off: a run's
# next round comes within this (a node that replied fast waits for the slowest one and
# the merge), and a node that had backed off would pick it up late.
ACTIVE_WINDOW_S = 10.0


class CappedSleep:
    """The ``time`` module as the SuperNode's loop sees it, with ``sleep`` capped.

    Flower's idle wait (``sleep(3)``: no message for this node) is capped at ``cap`` for
    ``active_window`` seconds after activity, then backs off by 1.5x per idle poll to
    ``idle_cap``; any other sleep of the loop (waiting for the ClientApp's reply) is
    activity: capped at ``cap``, and the next idle wait starts from ``cap`` again. Between
    the rounds of a run the node polls every ``cap`` seconds; a worker with no run polls
    every ``idle_cap`` seconds."""

    def __init__(self, cap: float, idle_cap: float | None = None, *,
                 active_window: float = ACTIVE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.idle_cap = max(cap, idle_cap if idle_cap is not None else cap)
        self.active_window = active_window
        self.clock = clock
        self._idle_wait = cap
        self._last_activity = -math.inf

    def sleep(self, seconds: float) -> None:
        if seconds < IDLE_SLEEP_S:
            wait = min(seconds, self.cap)
            self._idle_wait = self.cap
            self._last_activity = self.clock()
        elif self.clock() - self._last_activity < self.active_window:
            wait = min(seconds, self.cap)
        else:
            wait = min(seconds, self._idle_wait)
            self._idle_wait = min(self.idle_cap, self._idle_wait * IDLE_GROWTH)
        time.sleep(wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_supernode_sleeps(cap: float, idle_cap: float | None = None, *,
                        active_window: float = ACTIVE_WINDOW_S) -> bool:
    """Patch the SuperNode's loop; False (and a warning) if this Flower has no such loop."""
    from flwr.supernode import start_client_internal

    loop: ModuleType = start_client_internal
    if getattr(loop, "time", None) is not time:
        warnings.warn(f"this Flower's SuperNode loop ({loop.__file__}) has changed: "
                      "keeping its own poll interval", stacklevel=2)
        return False
    loop.time = CappedSleep(cap, idle_cap,  # type: ignore[attr-defined]
                            active_window=active_window)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S,
                        help="longest sleep of the SuperNode's loop, in seconds")
    parser.add_argument("--idle-poll-interval", type=float, default=DEFAULT_IDLE_POLL_S,
                        help="longest idle wait, reached by backing off from --poll-interval")
    parser.add_argument("supernode_args", nargs=argparse.REMAINDER,
                        help="-- then flower-supernode's own arguments")
    args = parser.parse_args(argv)
    if args.poll_interval <= 0:
        parser.error("--poll-interval must be > 0")
    rest = args.supernode_args[1:] if args.supernode_args[:1] == ["--"] else args.supernode_args
    cap_supernode_sleeps(args.poll_interval, args.idle_poll_interval)
    shorten_object_pull_backoff()  # its pulls of a message's objects from the SuperLink
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]  # it parses sys.argv itself
    flower_supernode()


if __name__ == "__main__":
    main()
