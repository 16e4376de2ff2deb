"""User-level differential privacy on the merge: the Gaussian mechanism on a bounded sum.

``GaussianSumMean`` clips each accepted offset to L2 norm C, counts it once (weight 1,
whatever number of examples its client claims), adds Gaussian noise of standard
deviation z C to the sum and divides by a fixed denominator m, the number of clients a
round samples (not the number that replied): one client can move the result by at most
2C / m, whoever else replied. The noise is drawn first, in place, into the buffers the
sum then accumulates in (the model's dtype, on the model's device), so it costs the
fill that zeroing them would have cost and the merge stays streaming, O(P) memory.

``AdaptiveClip`` makes C follow a target quantile of the offsets' norms (Andrew et al.
2021): after each round C <- C exp(-lr (b - gamma)), b the fraction of offsets with norm
<= C, itself counted with Gaussian noise. What the noise spends in (epsilon, delta) is
the accountant's business (coordinator/privacy.py); this file only draws it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from aggregation.combiners import (
    CombinerError,
    CombineResult,
    OffsetCombiner,
    _same_layout,
    clip_factor,
    update_norm,
)
from aggregation.types import ClientUpdate, Params


@dataclass(frozen=True)
class AdaptiveClip:
    """The clip's geometric update (Andrew et al. 2021, Algorithm 1)."""

    target_quantile: float = 0.5  # gamma: the fraction of offsets the clip should let through
    learning_rate: float = 0.2  # eta_C
    count_stddev: float = 1.0  # sigma_b: noise on the count of offsets with norm <= C

    def next_clip(self, clip: float, noisy_fraction: float) -> float:
        return clip * math.exp(-self.learning_rate * (noisy_fraction - self.target_quantile))


class GaussianSumMean(OffsetCombiner):
    """The DP mean: sum of clipped offsets plus N(0, (z C)^2) per coordinate, over m.

    Every tensor of the model gets noise, also one that no client sent (whether a tensor
    was sent is the clients' choice, so it must not show), and the result always holds
    every tensor: the optimizer steps even in a round where no offset was accepted.
    ``seed`` is for tests: by default the noise is seeded from the OS's entropy, since
    noise that can be replayed protects nothing.
    """

    streaming = True

    def __init__(
        self,
        *,
        clip: float,
        noise_multiplier: float,
        denominator: float,
        adaptive: AdaptiveClip | None = None,
        seed: int | None = None,
    ) -> None:
        if not clip > 0:
            raise CombinerError(f"the DP clip must be > 0, got {clip}")
        if not noise_multiplier > 0:
            raise CombinerError(f"the DP noise multiplier must be > 0, got {noise_multiplier}")
        if not denominator > 0:
            raise CombinerError(f"the DP denominator must be > 0, got {denominator}")
        super().__init__(clip_norm=clip)  # the current clip; adaptive clipping moves it
        self.noise_multiplier = noise_multiplier
        self.denominator = float(denominator)
        self.adaptive = adaptive
        self._seed = secrets.randbits(63) if seed is None else seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._sum: Params = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def _noise(self, template: Params, std: float) -> Params:
        """The sum's buffers, filled in place with N(0, std^2) draws."""
        if not _same_layout(self._sum, template):
            bad = [k for k, t in template.items() if not t.is_floating_point()]
            if bad:
                raise CombinerError(f"DP noise needs floating-point tensors; {bad} are not")
            self._sum = {k: torch.empty_like(t) for k, t in template.items()}
        for t in self._sum.values():
            t.normal_(0.0, std, generator=self._generator(t.device))
        return self._sum

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        clip = self.clip_norm
        std = self.noise_multiplier * clip
        acc = self._noise(template, std)
        device = next(iter(acc.values())).device
        merged = 0
        unclipped = 0
        for u in updates:
            xs = [x.to(device, non_blocking=True) for x in u.offset.values()]
            if (norm := u.norm) is None:  # not measured by the validator: measure it here
                norm = update_norm(dict(zip(u.offset, xs, strict=True)))
            if xs:  # weight 1: the examples a client claims buy it nothing here
                scale = clip_factor(u.offset, clip, norm=norm)
                torch._foreach_add_([acc[k] for k in u.offset], xs, alpha=scale)
            unclipped += norm <= clip
            merged += 1
        torch._foreach_div_(list(acc.values()), self.denominator)
        diagnostics: dict[str, float | list[str]] = {
            "dp-clip": clip, "dp-noise-std": std / self.denominator,
        }
        if self.adaptive is not None:
            self.clip_norm = self._next_clip(clip, unclipped, device)
            diagnostics["dp-next-clip"] = self.clip_norm
        return CombineResult(dict(acc), merged, diagnostics)

    def _next_clip(self, clip: float, unclipped: int, device: torch.device) -> float:
        """The clip for the next round, from a noisy count of this round's unclipped
        offsets: the released clip depends on the norms only through that count."""
        assert self.adaptive is not None
        noise = torch.empty(1, dtype=torch.float64, device=device).normal_(
            0.0, self.adaptive.count_stddev, generator=self._generator(device))
        fraction = (unclipped + float(noise)) / self.denominator
        return self.adaptive.next_clip(clip, fraction)

