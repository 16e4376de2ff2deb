"""Flower's object pulls with a short first retry.

A message's arrays travel as objects pulled after the message itself. Flower 1.42's
SuperNode stores a message (so its executor can start the ClientApp) before it has pulled
the message's objects from the SuperLink, so the ClientApp's first pull of those objects
usually finds one missing and retries. ``pull_objects`` (flwr/supercore/inflatable/
inflatable_utils.py) waits ``PULL_INITIAL_BACKOFF`` = 1 s before that retry, doubling up
to 10 s: one second of every task, most of a digits round. The default is bound when the
function is defined, so changing the constant does nothing; this module changes the
functions' keyword defaults in the process that calls it (and its forked children).
"""

from __future__ import annotations

import warnings

INITIAL_BACKOFF_S = 0.02
BACKOFF_CAP_S = 0.5


def shorten_object_pull_backoff(initial: float = INITIAL_BACKOFF_S,
                                cap: float = BACKOFF_CAP_S) -> bool:
    """Retry a missing object after ``initial`` s, doubling up to ``cap``; False (and a
    warning) if this Flower's pull functions have no such defaults."""
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects,
                 inflatable_utils.pull_and_inflate_object_from_tree)
    if not all({"initial_backoff", "backoff_cap"} <= set(f.__kwdefaults__ or {})
               for f in functions):
        warnings.warn(f"this Flower's object pulls ({inflatable_utils.__file__}) have "
                      "changed: keeping their own retry backoff", stacklevel=2)
        return False
    for f in functions:
        f.__kwdefaults__.update(initial_backoff=initial, backoff_cap=cap)
    return True
