"""Flower's SuperNode with a shorter poll interval: ``python -m coordinator.deploy.supernode
--poll-interval S -- <flower-supernode arguments>``.

Flower 1.42's SuperNode (flwr/supernode/start_client_internal.py) sleeps 3 s whenever the
SuperLink has no message for it and 0.5 s between looks for the ClientApp's reply, with no
option to change either. A round sends each node two messages (train, evaluate), so those
sleeps were most of a deployment round here (docs/deployment.md: 9.1 s a round, of which
the work is under 1 s). This entry point runs the very same SuperNode with every sleep in
that module capped at ``--poll-interval``; each poll is one small gRPC call to the
SuperLink, so hundreds of workers may want a longer interval than a handful.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from types import ModuleType
from typing import Any

DEFAULT_POLL_S = 0.2


class CappedSleep:
    """The ``time`` module as the SuperNode's loop sees it, with ``sleep`` capped."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_supernode_sleeps(cap: float) -> bool:
    """Patch the SuperNode's loop; False (and a warning) if this Flower has no such loop."""
    from flwr.supernode import start_client_internal

    loop: ModuleType = start_client_internal
    if getattr(loop, "time", None) is not time:
        warnings.warn(f"this Flower's SuperNode loop ({loop.__file__}) has changed: "
                      "keeping its own poll interval", stacklevel=2)
        return False
    loop.time = CappedSleep(cap)  # type: ignore[attr-defined]
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S,
                        help="longest sleep of the SuperNode's loop, in seconds")
    parser.add_argument("supernode_args", nargs=argparse.REMAINDER,
                        help="-- then flower-supernode's own arguments")
    args = parser.parse_args(argv)
    if args.poll_interval <= 0:
        parser.error("--poll-interval must be > 0")
    rest = args.supernode_args[1:] if args.supernode_args[:1] == ["--"] else args.supernode_args
    cap_supernode_sleeps(args.poll_interval)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]  # it parses sys.argv itself
    flower_supernode()


if __name__ == "__main__":
    main()
