"""Server-side SVG plots of a run, drawn with matplotlib's object API (no pyplot state).

Every data line carries a ``gid`` (``central-accuracy``, ``federated-loss``, ...): in the
SVG it becomes ``<g id=...>`` around the line and one ``<use>`` per marker, so a test
(or a reader) can count the points. The SVG starts at ``<svg``, so it can be inlined.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel

from coordinator.store.records import EVALUATION_KINDS
from dashboard.schemas import (
    EvaluationPublic,
    RoundPublic,
    RunTimedAccuracyPublic,
    TimedAccuracyPublic,
)

KIND_STYLE = {  # color, marker
    "central": ("#2563eb", "o"),
    "federated": ("#16a34a", "s"),
    "personalized": ("#d97706", "^"),
}
# One color per compared run, in the compare page's order (its swatches, charts.js).
RUN_COLORS = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#db2777",
              "#65a30d")
PHASES = ("send", "wait", "merge", "evaluate")
PHASE_COLORS = ("#93c5fd", "#cbd5e1", "#2563eb", "#f59e0b")
SIZE_IN = (6.4, 3.4)
RC = {
    "svg.fonttype": "none",  # text stays text: smaller, crisp, selectable
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.edgecolor": "#94a3b8",
    "axes.labelcolor": "#334155",
    "axes.titlesize": 11.0,
    "axes.titleweight": "bold",
    "axes.titlecolor": "#0f172a",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e2e8f0",
    "xtick.color": "#475569",
    "ytick.color": "#475569",
    "legend.frameon": False,
}

# matplotlib's font and text caches are shared by every figure: draw one at a time.
_LOCK = threading.Lock()
# The SVGs last drawn, by plot and the data drawn: a run page polled by many viewers draws
# each plot once per committed round, not once per request (a draw costs about 0.3 s of
# CPU, which the coordinator's rounds would otherwise share with every viewer).
_DRAWN: OrderedDict[tuple[str, str], str] = OrderedDict()
DRAWN_KEPT = 64


def _render(name: str, rows: Sequence[BaseModel], draw: Callable[[Axes], None]) -> str:
    key = (name, json.dumps([r.model_dump(mode="json") for r in rows], sort_keys=True))
    with _LOCK:
        if (svg := _DRAWN.get(key)) is not None:
            _DRAWN.move_to_end(key)
            return svg
        with matplotlib.rc_context({**RC, "svg.hashsalt": name}):
            fig = Figure(figsize=SIZE_IN, layout="constrained")
            draw(fig.add_subplot())
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = buf.getvalue()
        svg = svg[svg.index("<svg") :]
        _DRAWN[key] = svg
        while len(_DRAWN) > DRAWN_KEPT:
            _DRAWN.popitem(last=False)
    return svg


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", color="#64748b",
            transform=ax.transAxes)


def _round_axis(ax: Axes, numbers: Sequence[int]) -> None:
    """Whole rounds only: at least one round wide, so a lone point (or none, while a run
    starts) never spreads fractional ticks like -0.045 .. 0.045."""
    lo, hi = min(numbers, default=0), max(numbers, default=1)
    ax.set_xlim(lo - 0.4, max(hi, lo + 1) + 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _per_round(
    ax: Axes, evals: Sequence[EvaluationPublic], metric: str, unit: str = "round"
) -> None:
    drawn = False
    for kind in EVALUATION_KINDS:
        points = [
            (e.round_number, value)
            for e in evals
            if e.kind == kind and (value := getattr(e, metric)) is not None
        ]
        if not points:
            continue
        color, marker = KIND_STYLE[kind]
        (line,) = ax.plot(*zip(*points, strict=True), color=color, marker=marker,
                          markersize=5, linewidth=1.8, label=kind, clip_on=False)
        line.set_gid(f"{kind}-{metric}")
        drawn = True
    ax.set_xlabel(unit)
    _round_axis(ax, [e.round_number for e in evals if getattr(e, metric) is not None])
    if drawn:
        ax.legend(loc="best")
    else:
        _empty(ax, "evaluations")


def accuracy_svg(evals: Sequence[EvaluationPublic], unit: str = "round") -> str:
    """Accuracy per round (per model version in async mode): central (0 = the initial
    model), federated, personalized."""

    def draw(ax: Axes) -> None:
        _per_round(ax, evals, "accuracy", unit)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Accuracy per {unit}")

    return _render(f"accuracy-{unit}", evals, draw)


def loss_svg(evals: Sequence[EvaluationPublic], unit: str = "round") -> str:
    def draw(ax: Axes) -> None:
        _per_round(ax, evals, "loss", unit)
        ax.set_ylabel("loss")
        ax.set_title(f"Loss per {unit}")

    return _render(f"loss-{unit}", evals, draw)


def accuracy_time_svg(points: Sequence[TimedAccuracyPublic]) -> str:
    """Central accuracy against wall-clock seconds since the run started: sync and async
    runs on one footing (an async run's versions come faster than rounds)."""

    def draw(ax: Axes) -> None:
        if points:
            color, marker = KIND_STYLE["central"]
            (line,) = ax.plot([p.seconds for p in points], [p.accuracy for p in points],
                              color=color, marker=marker, markersize=4, linewidth=1.8,
                              label="central", clip_on=False)
            line.set_gid("central-accuracy-time")
            ax.set_xlim(0.0, max(max(p.seconds for p in points), 1.0) * 1.02)
        else:
            _empty(ax, "evaluations")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("wall-clock seconds since the run started")
        ax.set_ylabel("accuracy")
        ax.set_title("Central accuracy against time")

    return _render("accuracy-time", points, draw)


def compare_accuracy_time_svg(runs: Sequence[RunTimedAccuracyPublic]) -> str:
    """Compared runs' central accuracy against wall-clock seconds since each started,
    overlaid: sync rounds and async versions on one time axis. Each line's gid is
    ``accuracy-time-<run id>``."""

    def draw(ax: Axes) -> None:
        longest = 1.0
        for i, run in enumerate(runs):
            if not run.points:
                continue
            (line,) = ax.plot([p.seconds for p in run.points], [p.accuracy for p in run.points],
                              color=RUN_COLORS[i % len(RUN_COLORS)], marker="o", markersize=4,
                              linewidth=1.8, label=run.label, clip_on=False)
            line.set_gid(f"accuracy-time-{run.run_id}")
            longest = max(longest, *(p.seconds for p in run.points))
        if any(run.points for run in runs):
            ax.set_xlim(0.0, longest * 1.02)
            ax.legend(loc="lower right")
        else:
            _empty(ax, "evaluations")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("wall-clock seconds since each run started")
        ax.set_ylabel("accuracy")
        ax.set_title("Central accuracy against time")

    return _render("compare-accuracy-time", runs, draw)


def _duration_axis_top(totals: Sequence[float]) -> float:
    """The tallest bar, unless it is a lone outlier (round 1 carries the engine's start-up):
    that one is cut off rather than squashing every other round to a sliver."""
    ordered = sorted(totals)
    top = ordered[-1] * 1.05 or 1.0
    if len(ordered) >= 3:
        typical = ordered[len(ordered) // 2]
        top = min(top, max(typical * 4.0, ordered[-2] * 1.05))
    return top


def durations_svg(rounds: Sequence[RoundPublic], unit: str = "round") -> str:
    """Each committed round's wall time, stacked by phase: send, wait, merge, evaluate."""
    done = [r for r in rounds if r.status == "committed"]

    def draw(ax: Axes) -> None:
        numbers = [r.number for r in done]
        bottom = [0.0] * len(done)
        for phase, color in zip(PHASES, PHASE_COLORS, strict=True):
            heights = [getattr(r, f"{phase}_s") or 0.0 for r in done]
            bars = ax.bar(numbers, heights, bottom=bottom, color=color, label=phase, width=0.7)
            for number, bar in zip(numbers, bars, strict=True):
                bar.set_gid(f"duration-{phase}-r{number}")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_xlabel(unit)
        ax.set_ylabel("seconds")
        ax.set_title(f"{unit.capitalize()} duration by phase")
        _round_axis(ax, numbers)
        ax.grid(axis="x", visible=False)
        if done:
            # Outside, to the right: round 1 (often the tallest) sits at the upper left.
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), reverse=True)
            top = _duration_axis_top(bottom)
            ax.set_ylim(0.0, top)
            for number, total in zip(numbers, bottom, strict=True):
                if total > top:  # cut off: say how tall it really is
                    ax.annotate(f"{total:.1f} s", (number, top), xytext=(0, -3),
                                textcoords="offset points", ha="center", va="top",
                                fontsize=8, color="#0f172a", gid=f"duration-clipped-r{number}",
                                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none"})
        else:
            ax.set_ylim(0.0, 1.0)  # no negative seconds while a run starts
            _empty(ax, f"committed {unit}s")

    return _render(f"durations-{unit}", done, draw)


PLOT_NAMES = ("accuracy", "loss", "durations", "accuracy-time")
