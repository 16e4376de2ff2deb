"""The vocabulary of the merge: parameters, one client's update, the server's state."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

Params = dict[str, Tensor]
"""Named tensors, in the order of the model's state_dict."""


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends: its offset theta_i = (client model) - theta.

    ``offset`` may name only a subset of the model's tensors (a partial sub-model: the
    client trained only those). ``fisher``, when given, is a diagonal curvature estimate
    per tensor (same keys and shapes as ``offset``) for the curvature-weighted merge.
    """

    offset: Params
    weight: float  # m_i, the client's number of examples
    fisher: Params | None = None
    client_id: str = ""
    norm: float | None = None  # the offset's L2 norm when already measured, else None


@dataclass(frozen=True)
class OptimizerState:
    """A server optimizer's state. ``slots`` maps a slot name ("m", "v") to tensors
    keyed like the parameters; they are updated in place, ``step`` by replacement."""

    step: int = 0
    slots: dict[str, Params] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerState:
    """Everything the coordinator carries from one round to the next."""

    params: Params  # theta, the shared model
    opt_state: OptimizerState
    round: int = 0  # rounds merged so far
