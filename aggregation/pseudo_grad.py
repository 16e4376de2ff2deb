"""The objective's gradient from client offsets (docs/design.md: the envelope theorem).

At each client's inner optimum theta_i*, grad F(theta) = -lam * sum_i w_i theta_i*.
In ``global`` mode the same expression with scale 1 is FedOpt's pseudo-gradient
(signed global - client), so SGD with lr 1 on it is FedAvg.
"""

from __future__ import annotations

import torch

from aggregation.types import Params


@torch.no_grad()
def objective_gradient(mean_offset: Params, *, scale: float = 1.0) -> Params:
    """g = -scale * mean_offset, computed in place on ``mean_offset`` (which it returns).

    ``mean_offset`` is sum_i w_i theta_i with w_i normalised to sum 1 (per tensor, over
    the clients that sent it). ``scale`` is lam in ``personal`` mode, 1 in ``global``.
    """
    if mean_offset:  # _foreach_ kernels reject an empty list; nothing sent, nothing moves
        torch._foreach_mul_(list(mean_offset.values()), -scale)
    return mean_offset
