"""SVG plots: one marker per evaluation, labelled lines, valid standalone SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from dashboard import plots
from dashboard.schemas import EvaluationPublic, RoundPublic

SVG_NS = "{http://www.w3.org/2000/svg}"


def _eval(n: int, kind: str, acc: float | None, loss: float | None = 1.0) -> EvaluationPublic:
    return EvaluationPublic(
        round_number=n, kind=kind, loss=loss, accuracy=acc, num_examples=10, metrics={}
    )


def _round(n: int, status: str = "committed", wait_s: float = 1.5) -> RoundPublic:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    return RoundPublic(
        number=n, status=status, attempts=1, started_at=t0, finished_at=t0 + timedelta(seconds=3),
        send_s=0.5, wait_s=wait_s, merge_s=0.25, evaluate_s=0.75, num_clients=3, num_accepted=3,
        num_rejected=0, metrics={}, checkpoint_sha256=None,
    )


def _points(svg: str, gid: str) -> int:
    group = ET.fromstring(svg).find(f".//{SVG_NS}g[@id='{gid}']")
    return -1 if group is None else len(group.findall(f".//{SVG_NS}use"))


def test_accuracy_has_one_marker_per_evaluation_and_skips_missing_values() -> None:
    evals = [_eval(n, "central", 0.1 + 0.2 * n) for n in range(4)]
    evals += [_eval(n, "federated", 0.2 * n) for n in (1, 2, 3)]
    evals += [_eval(1, "personalized", None), _eval(2, "personalized", 0.7)]
    svg = plots.accuracy_svg(evals)
    assert _points(svg, "central-accuracy") == 4
    assert _points(svg, "federated-accuracy") == 3
    assert _points(svg, "personalized-accuracy") == 1
    for text in ("Accuracy per round", "round", "accuracy", "central", "federated"):
        assert f">{text}<" in svg


def test_loss_lines_and_absent_kinds() -> None:
    svg = plots.loss_svg([_eval(n, "central", 0.5, loss=2.0 / (n + 1)) for n in range(3)])
    assert _points(svg, "central-loss") == 3
    assert _points(svg, "federated-loss") == -1  # no data, no line
    assert ">Loss per round<" in svg


def test_durations_stack_four_phases_for_committed_rounds_only() -> None:
    svg = plots.durations_svg([_round(1), _round(2), _round(3, status="running")])
    ids = set(re.findall(r'id="(duration-[a-z]+-r\d+)"', svg))
    assert ids == {f"duration-{p}-r{n}" for p in plots.PHASES for n in (1, 2)}
    assert ">Round duration by phase<" in svg and ">seconds<" in svg


def _bar_heights(svg: str) -> dict[str, float]:
    """Height of each round's bar stack in SVG units, from the bars' paths; a path that runs
    off the top of the figure (the axes clip it) counts up to the figure's edge only."""
    tree = ET.fromstring(svg)
    heights: dict[str, float] = {}
    for group in tree.iter(f"{SVG_NS}g"):
        gid = group.get("id", "")
        if m := re.fullmatch(rf"duration-(?:{'|'.join(plots.PHASES)})-(r\d+)", gid):
            path = ET.tostring(group, "unicode")
            ys = [max(0.0, float(y)) for y in re.findall(r"[ML] [\d.]+ (-?[\d.]+)", path)]
            heights[m[1]] = heights.get(m[1], 0.0) + max(ys) - min(ys)
    return heights


def test_a_start_up_outlier_is_cut_off_and_labelled_not_squashing_the_rest() -> None:
    rounds = [_round(1, wait_s=60.0)] + [_round(n) for n in range(2, 8)]  # 61.5 s vs 3 s
    svg = plots.durations_svg(rounds)
    clipped = ET.fromstring(svg).find(f".//{SVG_NS}g[@id='duration-clipped-r1']")
    assert clipped is not None and ">61.5 s<" in ET.tostring(clipped, "unicode")
    assert "duration-clipped-r2" not in svg
    heights = _bar_heights(svg)
    # Uncut, round 2 would be 3/61.5 (0.05) of round 1's height.
    assert heights["r2"] / heights["r1"] > 0.15

    even = plots.durations_svg([_round(n) for n in range(1, 8)])
    assert "duration-clipped" not in even


def test_empty_plots_say_so() -> None:
    assert "no evaluations yet" in plots.accuracy_svg([])
    assert "no committed rounds yet" in plots.durations_svg([])


def test_svg_is_standalone_and_deterministic() -> None:
    evals = [_eval(0, "central", 0.1), _eval(1, "central", 0.5)]
    svg = plots.accuracy_svg(evals)
    assert svg.startswith("<svg") and ET.fromstring(svg).tag == f"{SVG_NS}svg"
    assert svg == plots.accuracy_svg(evals)
    # Distinct salts: two plots inlined in one page do not share marker/clip ids.
    ids = set(re.findall(r'<(?:path|clipPath) id="([^"]+)"', svg))
    loss_ids = set(re.findall(r'<(?:path|clipPath) id="([^"]+)"', plots.loss_svg(evals)))
    assert ids and not ids & loss_ids


def _tick_labels(svg: str, axis: str) -> list[str]:
    root = ET.fromstring(svg)
    group = root.find(f".//{SVG_NS}g[@id='matplotlib.axis_{axis}']")
    assert group is not None
    return [t.text or "" for t in group.iter(f"{SVG_NS}text") if t.text]


def test_a_starting_run_has_whole_rounds_and_no_negative_seconds() -> None:
    lone = [_eval(0, "central", 0.1)]  # only the initial model so far
    for svg in (plots.accuracy_svg(lone), plots.loss_svg(lone), plots.accuracy_svg([]),
                plots.durations_svg([]), plots.durations_svg([_round(1)])):
        rounds = [t for t in _tick_labels(svg, "1") if t != "round"]
        assert rounds and all(re.fullmatch(r"\d+", t) for t in rounds), rounds
    seconds = [t for t in _tick_labels(plots.durations_svg([]), "2") if t != "seconds"]
    assert seconds and not any(t.startswith(("-", "−")) for t in seconds), seconds


def test_an_unchanged_run_is_drawn_once_and_a_new_round_is_drawn_again(monkeypatch) -> None:
    drawn: list[object] = []
    real = plots.Figure

    def counting(*args, **kwargs):
        drawn.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "Figure", counting)
    monkeypatch.setattr(plots, "_DRAWN", OrderedDict())  # nothing drawn by other tests
    evals = [_eval(0, "central", 0.31), _eval(1, "central", 0.52)]
    first = plots.accuracy_svg(evals)
    assert plots.accuracy_svg(list(evals)) == first and len(drawn) == 1  # same data: no draw
    grown = plots.accuracy_svg([*evals, _eval(2, "central", 0.77)])
    assert len(drawn) == 2 and grown != first and _points(grown, "central-accuracy") == 3
    assert plots.loss_svg(evals) != first and len(drawn) == 3  # another plot of the same rows
