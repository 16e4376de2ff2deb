"""Robust combiners made for heterogeneous (non-IID) clients: bucketing, centered clipping
and FLTrust. Same interface as ``aggregation/combiners.py``; pure torch.

Memory on the coordinator (P: the model's size, K: clients in the round):

- ``Bucketing``: O(K x P) for the held offsets (the merge holds them), plus O(K/s x P)
  for the bucket means, plus what its inner rule needs.
- ``CenteredClipping``: O(K x P) held offsets, plus O(P) for the center kept across
  rounds and O(P) scratch.
- ``FLTrust``: streaming, O(P): the server update and one accumulator; plus the cost of
  training the server update (one local training on the root data per round).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from aggregation.combiners import (
    CombinerError,
    CombineResult,
    Krum,
    OffsetCombiner,
    _clip_factor,
    median_rows,
    reference_norm,
    trimmed_rows,
    update_norm,
)
from aggregation.types import ClientUpdate, Params

BUCKET_RULES = ("median", "trimmed-mean", "krum", "multi-krum")


def _full_only(ups: Sequence[ClientUpdate], template: Params, rule: str) -> None:
    if any(set(u.offset) != set(template) for u in ups):
        raise CombinerError(f"{rule} needs every client to send every tensor")


class Bucketing(OffsetCombiner):
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022): shuffle the K updates, average
    them in buckets of ``bucket_size`` s (the last bucket may be smaller), then apply the
    robust ``rule`` to the ceil(K/s) bucket means. Averaging first shrinks the spread of
    honest non-IID offsets that makes median-type rules biased.

    A hostile client spoils at most one bucket, so the rule's budget still counts hostile
    clients: Krum's f and the trimmed mean's floor(beta n) (each less the replies
    validation refused) are numbers of spoilt buckets; the trimmed mean cuts at most
    (buckets - 1) // 2 at each end. Bucket means are unweighted; a bucket's weight is its
    clients' examples (multi-Krum averages the selected buckets by it).
    """

    full_updates_only = True

    def __init__(
        self, rule: str, *, bucket_size: int = 2, trim_beta: float = 0.1, byzantine: int = 1,
        clip_norm: float = 0.0, seed: int = 0,
    ) -> None:
        super().__init__(clip_norm=clip_norm)
        if rule not in BUCKET_RULES:
            raise CombinerError(f"bucketing: unknown rule {rule!r}; known: {BUCKET_RULES}")
        if bucket_size < 1:
            raise CombinerError(f"bucket-size must be >= 1, got {bucket_size}")
        if not 0.0 <= trim_beta < 0.5:
            raise CombinerError(f"trim-beta must be in [0, 0.5), got {trim_beta}")
        self.rule = rule
        self.bucket_size = bucket_size
        self.trim_beta = trim_beta
        self.byzantine = byzantine
        self._krum = Krum(byzantine=byzantine, num_selected=1 if rule == "krum" else None)
        self._generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        ups = list(updates)
        if not ups:
            return CombineResult({}, 0)
        _full_only(ups, template, f"bucketed {self.rule}")
        buckets = self.buckets(ups)
        if self.rule in ("krum", "multi-krum"):
            inner = self._krum.combine(buckets, template, rejected=rejected)
            chosen = set(inner.diagnostics.get("selected", []))
            dropped = {c: f"in a bucket not selected by {self.rule}"
                       for b in buckets if b.client_id not in chosen
                       for c in b.client_id.split("+")}
            return CombineResult(inner.offset, len(ups),
                                 {"buckets": float(len(buckets))}, dropped)
        stacked = {k: torch.stack([b.offset[k] for b in buckets]) for k in template}
        if self.rule == "median":
            out = {k: median_rows(s) for k, s in stacked.items()}
        else:
            hostile = max(0, math.floor(self.trim_beta * (len(ups) + rejected)) - rejected)
            cut = min(hostile, (len(buckets) - 1) // 2)
            out = {k: trimmed_rows(s, cut) for k, s in stacked.items()}
        return CombineResult(out, len(ups), {"buckets": float(len(buckets))})

    def buckets(self, ups: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        """The bucket means, as updates named by their clients' ids joined with "+"."""
        order = torch.randperm(len(ups), generator=self._generator).tolist()
        out = []
        for start in range(0, len(order), self.bucket_size):
            members = [ups[i] for i in order[start : start + self.bucket_size]]
            scales = [_clip_factor(u, self.clip_norm) / len(members) for u in members]
            mean = {k: torch.zeros_like(members[0].offset[k], dtype=t.dtype)
                    for k, t in members[0].offset.items()}
            for u, s in zip(members, scales, strict=True):
                torch._foreach_add_(list(mean.values()), [u.offset[k] for k in mean], alpha=s)
            out.append(ClientUpdate(mean, sum(u.weight for u in members),
                                    client_id="+".join(u.client_id for u in members)))
        return out


class CenteredClipping(OffsetCombiner):
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021), on the server: start from
    v, the previous round's combined offset (zero in the first round: the server's
    momentum of the offsets), and ``iterations`` times

        v <- v + sum_i w_i clip_tau(theta_i - v) / sum_i w_i,
        clip_tau(d) = d min(1, tau / ||d||),

    with w_i the examples. A hostile offset moves v by at most w_i tau / sum w whatever
    its size or direction. ``tau`` 0 (the default) takes, at each iteration, the median
    of the distances ||theta_i - v||: the scale of honest offsets changes by orders of
    magnitude over a run, a fixed radius would clip everything or nothing.

    State: v is kept between rounds (O(P)); a resumed run starts again from zero.
    """

    full_updates_only = True

    def __init__(self, *, tau: float = 0.0, iterations: int = 3, clip_norm: float = 0.0) -> None:
        super().__init__(clip_norm=clip_norm)
        if tau < 0:
            raise CombinerError(f"cc-tau must be >= 0 (0 = automatic), got {tau}")
        if iterations < 1:
            raise CombinerError(f"cc-iterations must be >= 1, got {iterations}")
        self.tau = tau
        self.iterations = iterations
        self._center: Params = {}

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        ups = list(updates)
        if not ups:
            return CombineResult({}, 0)
        _full_only(ups, template, "centered clipping")
        v = self._start(template)
        total = sum(u.weight for u in ups)
        scales = [_clip_factor(u, self.clip_norm) for u in ups]
        clipped = 0
        radius = self.tau
        for _ in range(self.iterations):
            dists = [_distance(u.offset, v, s) for u, s in zip(ups, scales, strict=True)]
            radius = self.tau or _median(dists)
            step = {k: torch.zeros_like(t) for k, t in v.items()}
            clipped = 0
            for u, s, d in zip(ups, scales, dists, strict=True):
                factor = 1.0 if d <= radius or d == 0 else radius / d
                clipped += factor < 1.0
                a = u.weight * factor / total
                torch._foreach_add_(list(step.values()), [u.offset[k] for k in step], alpha=a * s)
                torch._foreach_add_(list(step.values()), list(v.values()), alpha=-a)
            torch._foreach_add_(list(v.values()), list(step.values()))
        self._center = v
        return CombineResult({k: t.clone() for k, t in v.items()}, len(ups),
                             {"clipped": float(clipped), "radius": float(radius)})

    def _start(self, template: Params) -> Params:
        if self._center.keys() == template.keys() and all(
            self._center[k].shape == t.shape and self._center[k].dtype == t.dtype
            for k, t in template.items()
        ):
            return self._center
        return {k: torch.zeros_like(t) for k, t in template.items()}


def _distance(offset: Params, center: Params, scale: float) -> float:
    return update_norm({k: offset[k] * scale - c for k, c in center.items()})


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


ServerUpdate = Callable[[Params], Params]
"""theta -> the coordinator's own offset, trained on its root data."""


FLTRUST_SCALES = ("server", "median")


class FLTrust(OffsetCombiner):
    """FLTrust (Cao, Fang, Liu and Gong, NDSS 2021). Each round the coordinator trains its
    own offset g0 = ``server_update(theta)`` on a small root data set it holds; a client's
    trust score is TS_i = ReLU(cos(theta_i, g0)), its offset is rescaled to a common norm
    c, and the result is c sum_i TS_i theta_i / ||theta_i|| / sum_i TS_i. An offset
    pointing away from the server's (cosine <= 0) gets no weight, and no offset weighs
    more than another by its size. Unweighted by examples (one client, one vote).

    ``scale`` picks c:

    - ``"server"``: c = ||g0||, the paper's choice;
    - ``"median"``: c = the median norm of the round's offsets (with ``byzantine`` f > 0,
      ``reference_norm``'s order statistic, which f hostile norms cannot pull below the
      honest median). The root set is small and balanced, so on non-IID clients g0 is
      short (its gradients partly cancel; a client of one or two classes moves far in
      one direction): on the digits splits of docs/robustness.md ||g0|| is a third of
      the median client norm, and the paper's rescaling shrinks every step by that much.
      The median keeps the clients' own step size, and hostile clients in a minority
      cannot move it outside the honest norms' range (a small-norm attack pulls it down
      to a low honest norm at most, a scaled one up to a high honest norm). Each offset
      still counts with the same norm, so the bound on one client's influence
      (TS_i c / sum TS) is the paper's.

    Streaming: O(P) memory (g0 and one accumulator of the unit offsets; c is applied at
    the end), whatever K. ``template`` must hold theta's values (the merge passes theta).
    A round in which every score is 0 merges nothing; each client is then reported as not
    merged with its cosine.
    """

    streaming = True
    full_updates_only = True

    def __init__(
        self, server_update: ServerUpdate, *, scale: str = "server", byzantine: int = 0,
        clip_norm: float = 0.0,
    ) -> None:
        super().__init__(clip_norm=clip_norm)
        if scale not in FLTRUST_SCALES:
            raise CombinerError(f"fltrust-scale must be one of {FLTRUST_SCALES}, got {scale!r}")
        self.server_update = server_update
        self.scale = scale
        self.byzantine = byzantine

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        g0 = {k: t.to(template[k].dtype) for k, t in self.server_update(template).items()}
        if g0.keys() != template.keys():
            raise CombinerError("fltrust: the server update must name every tensor of theta")
        g0_norm = update_norm(g0)
        acc = {k: torch.zeros_like(t) for k, t in template.items()}
        total = 0.0
        norms: list[float] = []
        scores: dict[str, float] = {}
        for u in updates:
            if u.offset.keys() != template.keys():
                raise CombinerError("fltrust needs every client to send every tensor")
            norm = u.norm if u.norm is not None else update_norm(u.offset)
            norms.append(norm)
            dot = sum(float(torch.sum(u.offset[k].double() * g0[k].double())) for k in g0)
            cos = dot / (norm * g0_norm) if norm > 0 and g0_norm > 0 else 0.0
            scores[u.client_id] = cos
            trust = max(cos, 0.0)
            if trust > 0:
                torch._foreach_add_(list(acc.values()), [u.offset[k] for k in acc],
                                    alpha=trust / norm)
                total += trust
        dropped = {c: f"fltrust trust score 0: cosine {cos:.3g} with the server update"
                   for c, cos in scores.items() if cos <= 0}
        c = g0_norm if self.scale == "server" or not norms else reference_norm(
            norms, self.byzantine)
        diag: dict[str, float | list[str]] = {"server-norm": g0_norm, "scale": c}
        if total <= 0:
            return CombineResult({}, len(norms), diag, dropped)
        torch._foreach_mul_(list(acc.values()), c / total)
        return CombineResult(acc, len(norms), diag, dropped)
