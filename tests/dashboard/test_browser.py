"""The dashboard in real headless Chromium (Playwright), served by uvicorn on 127.0.0.1.

Set FEDMERGE_UPDATE_SCREENSHOT=1 to refresh docs/dashboard-run.png from the real run.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import repo
from coordinator.store.models import RunRow
from dashboard.server import serve_in_thread
from tests.dashboard import factories
from tests.dashboard.conftest import TOKEN, RealRun
from tests.dashboard.test_plots import SVG_NS
from tests.dashboard.test_server import free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-run.png"
VIEWPORT = {"width": 1360, "height": 900}

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests but {CHROMIUM} is missing "
                    "(apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    yield context.new_page()
    context.close()


COUNTER_WATCH = """
window.__counterVsRows = [];
new MutationObserver(() => {
  const done = document.getElementById("rounds-done");
  const rows = document.querySelectorAll("#rounds tbody tr.round-committed").length;
  if (done) window.__counterVsRows.push([Number(done.textContent), rows]);
}).observe(document.querySelector("main"), { childList: true, subtree: true, characterData: true });
"""


def _points(page: Page, chart: str) -> dict[str, int]:
    """Points per series of an interactive chart, once it is drawn."""
    locator = page.locator(f'.chart[data-chart="{chart}"]')
    expect(locator).to_have_attribute("data-points", re.compile(r"\{.+\}"))
    return json.loads(locator.get_attribute("data-points") or "{}")


def _svg_points(svg: str, gid: str) -> int:
    group = ET.fromstring(svg).find(f".//{SVG_NS}g[@id='{gid}']")
    assert group is not None, gid
    return len(group.findall(f".//{SVG_NS}use"))


def _hover(page: Page, over: Locator, value: Locator, at: float) -> str:
    """Hover a chart at ``at`` (0 = left edge, 1 = right) until its legend shows a value
    (a chart redrawn under the pointer, e.g. when a scrollbar appears, needs a new move)."""
    for _ in range(50):
        box = over.bounding_box()
        if box and box["width"] > 0:
            x = box["x"] + min(max(box["width"] * at, 2), box["width"] - 3)
            page.mouse.move(x - 5, box["y"] + box["height"] / 2)
            page.mouse.move(x, box["y"] + box["height"] / 2)
            text = value.inner_text().strip()
            if text and text[0].isdigit():
                return text
        page.wait_for_timeout(100)
    pytest.fail(f"hovering the chart showed no value (legend: {value.inner_text()!r})")


def _serve(db_url: str, token: str | None = None) -> tuple[str, uvicorn.Server]:
    port = free_port()
    server = serve_in_thread(db_url, "127.0.0.1", port, token=token)
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="module")
def real_base(real_run: RealRun) -> Iterator[str]:
    base, server = _serve(real_run.db_url)
    yield base
    server.should_exit = True


def test_runs_list_to_run_page_with_every_central_point(
    page: Page, real_base: str, real_run: RealRun, tmp_path: Path
) -> None:
    page.goto(f"{real_base}/")
    page.get_by_role("link", name=real_run.run_id[:8]).click()
    page.wait_for_url(f"{real_base}/runs/{real_run.run_id}")
    expect(page.locator("#rounds-done")).to_have_text("3")
    evals = page.request.get(f"{real_base}/api/runs/{real_run.run_id}/evaluations").json()
    central = [e for e in evals["data"] if e["kind"] == "central"]
    assert len(central) == 4  # round 0 (the initial model) and rounds 1-3
    expect(page.locator('.chart[data-chart="accuracy"] canvas')).to_have_count(1)
    assert _points(page, "accuracy")["central"] == len(central)
    svg = page.request.get(f"{real_base}/runs/{real_run.run_id}/plots/accuracy.svg").text()
    assert _svg_points(svg, "central-accuracy") == len(central)  # the no-JavaScript fallback
    assert page.locator("#clients tbody tr").count() == 3
    shot = SCREENSHOT if os.environ.get("FEDMERGE_UPDATE_SCREENSHOT") else tmp_path / "run.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_a_live_run_updates_without_a_reload(
    page: Page, file_store: tuple[str, sessionmaker[Session]]
) -> None:
    url, writer = file_store
    with writer.begin() as s:
        run_id = factories.create_run(s, rounds_planned=4)
        factories.commit_round(s, run_id, factories.round_record(1))
    base, server = _serve(url)
    errors: list[BaseException] = []

    def coordinator() -> None:  # commits rounds 2-4 while the page is open
        try:
            for number in (2, 3, 4):
                time.sleep(0.8)
                with writer.begin() as s:
                    factories.commit_round(s, run_id, factories.round_record(number))
            with writer.begin() as s:
                repo.finish_run(s, run_id, "completed")
        except BaseException as exc:
            errors.append(exc)

    try:
        page.goto(f"{base}/runs/{run_id}")
        expect(page.locator("#rounds-done")).to_have_text("1")
        page.evaluate("window.__sameDocument = true")
        page.evaluate(COUNTER_WATCH)
        thread = threading.Thread(target=coordinator, daemon=True)
        thread.start()
        expect(page.locator("#rounds-done")).to_have_text("4", timeout=20_000)
        thread.join(timeout=10)
        assert not errors, errors
        assert page.evaluate("window.__sameDocument === true")  # no reload happened
        # The plots were fetched again too: rounds 0-4 on the central accuracy line.
        expect(page.locator('.chart[data-chart="accuracy"]')).to_have_attribute(
            "data-points", re.compile(r'"central":5\b'), timeout=10_000)
        # The counter never ran ahead of the table: each swap showed both from one copy.
        seen = page.evaluate("window.__counterVsRows")
        assert seen and all(done == rows for done, rows in seen), seen
        expect(page.locator("#run-head .badge")).to_have_text("completed", timeout=10_000)
    finally:
        server.should_exit = True


def test_token_is_required(page: Page, file_store: tuple[str, sessionmaker[Session]]) -> None:
    url, writer = file_store
    with writer.begin() as s:
        run_id = factories.create_run(s)
    base, server = _serve(url, token=TOKEN)
    try:
        refused = page.goto(f"{base}/runs/{run_id}")
        assert refused is not None and refused.status == 401
        expect(page.locator(".error-code")).to_have_text("401")
        assert page.request.get(f"{base}/api/runs").status == 401
        allowed = page.goto(f"{base}/runs/{run_id}?token={TOKEN}")
        assert allowed is not None and allowed.status == 200
        assert page.url == f"{base}/runs/{run_id}"  # redirected: the token left the address
        again = page.goto(f"{base}/")  # the HttpOnly cookie carries the session now
        assert again is not None and again.status == 200
        expect(page.get_by_role("link", name=run_id[:8])).to_be_visible()
    finally:
        server.should_exit = True


# ---- issue 19: interactive plots, comparison, drill-down, paging, dark mode ----------


@pytest.fixture
def two_runs(file_store: tuple[str, sessionmaker[Session]]) -> Iterator[tuple[str, list[str]]]:
    """alpha: 40 rounds (every 4th drops p2 with a reason), beta: 3 rounds, another config."""
    url, writer = file_store
    with writer.begin() as s:
        alpha = factories.create_run(s, name="alpha", rounds_planned=40)
        for number in range(1, 41):
            reject = "offset norm 9.1 > 3 (max-update-norm)" if number % 4 == 0 else None
            factories.commit_round(s, alpha, factories.round_record(number, reject=reject))
        beta = factories.create_run(s, name="beta", rounds_planned=3)
        run = s.get(RunRow, beta)
        assert run is not None
        run.config = {**run.config, "optimizer": "sgd", "num-server-rounds": 3}
        for number in (1, 2, 3):
            factories.commit_round(s, beta, factories.round_record(number))
    base, server = _serve(url)
    yield base, [alpha, beta]
    server.should_exit = True


def _csp_watch(page: Page) -> list[str]:
    """Collect every CSP violation and console error the page reports."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('CSP ' + e.violatedDirective + ' ' + e.blockedURI));"
    )
    return problems


def test_the_page_works_under_its_content_security_policy(
    page: Page, two_runs: tuple[str, list[str]]
) -> None:
    base, (alpha, _) = two_runs
    problems = _csp_watch(page)
    response = page.goto(f"{base}/runs/{alpha}")
    assert response is not None
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for chart in ("accuracy", "loss", "durations"):
        expect(page.locator(f'.chart[data-chart="{chart}"] canvas')).to_have_count(1)
    assert _points(page, "loss")["train loss"] == 40  # the train loss is drawn too
    expect(page.locator("time").first).not_to_contain_text("UTC")  # local time, by script
    page.wait_for_timeout(500)
    assert problems == []


def test_hovering_a_plot_shows_a_value(page: Page, two_runs: tuple[str, list[str]]) -> None:
    base, (alpha, _) = two_runs
    page.goto(f"{base}/runs/{alpha}")
    over = page.locator('.chart[data-chart="accuracy"] .u-over')
    expect(over).to_be_visible()
    central = page.locator('.chart[data-chart="accuracy"] .u-legend .u-series', has_text="central")
    value = central.locator(".u-value")
    assert re.fullmatch(r"\d+(\.\d)?%", _hover(page, over, value, 0.5))
    assert _hover(page, over, value, 0.0) == "10.0%"  # round 0: the initial model


def test_two_runs_overlaid_with_config_differences_highlighted(
    page: Page, two_runs: tuple[str, list[str]]
) -> None:
    base, (alpha, beta) = two_runs
    page.goto(f"{base}/")
    page.get_by_label("compare alpha").check()
    page.get_by_label("compare beta").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url(re.compile(r"/compare\?runs="))
    points = _points(page, "accuracy")
    assert points == {f"{alpha[:8]} alpha": 41, f"{beta[:8]} beta": 4}
    expect(page.locator('.chart[data-chart="accuracy"] canvas')).to_have_count(1)
    overlay = page.locator("#plot-accuracy-time img")  # accuracy against seconds, beside
    expect(overlay).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.querySelector('#plot-accuracy-time img');"
        " return i.complete && i.naturalWidth > 0; }")
    svg = page.request.get(base + str(overlay.get_attribute("src"))).text()
    assert f'id="accuracy-time-{alpha}"' in svg and f'id="accuracy-time-{beta}"' in svg
    differs = page.locator('#config-diff tr.diff[data-key="optimizer"]')
    expect(differs).to_contain_text("adam")
    expect(differs).to_contain_text("sgd")
    same = page.locator('#config-diff tr.same[data-key="num-server-rounds"]')
    assert same.count() == 0  # 40 vs 3: it differs too
    colour = differs.locator("td").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour not in ("rgba(0, 0, 0, 0)", "transparent")


def test_a_rejected_clients_reason_is_on_its_page(
    page: Page, two_runs: tuple[str, list[str]]
) -> None:
    base, (alpha, _) = two_runs
    page.goto(f"{base}/runs/{alpha}")
    link = page.locator("#clients").get_by_role("link", name="p2")
    expect(link).to_have_attribute("title", "node 3333")  # short name, full id on hover
    link.click()
    page.wait_for_url(f"{base}/runs/{alpha}/clients/3333")
    dropped = page.locator("#client-rounds tbody tr.rejected").first
    expect(dropped).to_contain_text("offset norm 9.1 > 3 (max-update-norm)")
    expect(dropped).to_contain_text("dropped")
    assert _points(page, "offset") == {"offset norm": 40, "dropped": 10}


def test_long_tables_are_paged(page: Page, two_runs: tuple[str, list[str]]) -> None:
    base, (alpha, _) = two_runs
    page.goto(f"{base}/runs/{alpha}")
    rows = page.locator("#rounds tbody tr")
    assert rows.count() == 41  # round 0 and 40 rounds, in the page
    expect(page.locator("#rounds tbody tr:visible")).to_have_count(15)
    pager = page.get_by_role("navigation", name="rounds pages")
    expect(pager).to_contain_text("rows 1–15 of 41")
    pager.get_by_role("button", name="Next ›").click()
    expect(pager).to_contain_text("rows 16–30 of 41")
    expect(rows.nth(0)).to_be_hidden()
    expect(rows.nth(15)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollHeight") < 4000
    page.goto(f"{base}/?per_page=1&sort=name&order=asc")  # the runs list pages on the server
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs")).to_contain_text("alpha")
    page.get_by_role("link", name="Next ›").click()
    expect(page.locator("#runs")).to_contain_text("beta")


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_dark_mode_follows_the_system(
    browser: Browser, two_runs: tuple[str, list[str]], scheme: str
) -> None:
    base, (alpha, _) = two_runs
    context = browser.new_context(viewport=VIEWPORT, color_scheme=scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.goto(f"{base}/runs/{alpha}")
        background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
        assert (red + green + blue < 150) == (scheme == "dark"), background
    finally:
        context.close()


def test_a_page_whose_server_has_gone_says_so(
    page: Page, file_store: tuple[str, sessionmaker[Session]]
) -> None:
    url, writer = file_store
    with writer.begin() as s:
        run_id = factories.create_run(s, out_dir="/srv/fedmerge-out")
    base, server = _serve(url)
    page.goto(f"{base}/runs/{run_id}")
    gone = page.locator("#server-gone")
    expect(gone).to_be_hidden()
    server.should_exit = True
    expect(gone).to_be_visible(timeout=15_000)
    expect(gone).to_contain_text("The dashboard stopped")
    expect(gone).to_contain_text("fedmerge dashboard --out-dir /srv/fedmerge-out")


def test_tags_and_notes_saved_from_the_page(
    page: Page, file_store: tuple[str, sessionmaker[Session]]
) -> None:
    url, writer = file_store
    with writer.begin() as s:
        run_id = factories.create_run(s, name="to-tag")
    base, server = _serve(url, token=TOKEN)
    try:
        page.goto(f"{base}/runs/{run_id}?token={TOKEN}")
        form = page.locator("#annotations-form")
        form.get_by_label("Tags (comma-separated)").fill("baseline, lr-sweep")
        form.get_by_label("Notes").fill("diverges after round 3")
        form.get_by_role("button", name="Save").click()
        expect(page.locator("#annotations-status")).to_have_text("saved")
        page.goto(f"{base}/?q=lr-sweep")
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        expect(page.locator("#runs .run-tag")).to_have_text(["baseline", "lr-sweep"])
    finally:
        server.should_exit = True
    with writer() as s:
        run = s.get(RunRow, run_id)
        assert run is not None and run.notes == "diverges after round 3"


def test_smoothing_and_log_scale_redraw_the_curves(
    page: Page, two_runs: tuple[str, list[str]]
) -> None:
    base, (alpha, _) = two_runs
    page.goto(f"{base}/runs/{alpha}")
    chart = page.locator('.chart[data-chart="loss"]')
    value = chart.locator(".u-legend .u-series", has_text="central loss").locator(".u-value")
    over = chart.locator(".u-over")
    expect(over).to_be_visible()

    def hover_round_40() -> str:
        return _hover(page, over, value, 1.0)

    raw = hover_round_40()
    assert float(raw) == pytest.approx(2.0 / 41, rel=1e-3)  # the factory's central loss
    page.locator("[data-smooth]").fill("0.9")
    smoothed = hover_round_40()
    assert float(smoothed) > float(raw)  # the average still carries the early, higher losses
    page.locator("[data-log]").check()
    expect(chart.locator("canvas")).to_have_count(1)
    assert float(hover_round_40()) == pytest.approx(float(smoothed), rel=1e-3)


def test_a_starting_run_draws_whole_rounds_and_no_negative_seconds(
    page: Page, file_store: tuple[str, sessionmaker[Session]]
) -> None:
    url, writer = file_store
    with writer.begin() as s:  # only the initial model's evaluation so far
        run_id = factories.create_run(s, rounds_planned=5)
    base, server = _serve(url)
    try:
        page.goto(f"{base}/runs/{run_id}")
        expect(page.locator('.chart[data-chart="accuracy"] canvas')).to_have_count(1)
        ticks = page.evaluate(
            "Array.from(window.fedmerge.charts.values(), u => u.axes[0]._values.filter(Boolean))"
        )
        assert ticks and all(t and all(re.fullmatch(r"\d+", v) for v in t) for t in ticks), ticks
        expect(page.locator('.chart[data-chart="durations"]')).to_contain_text("no data yet")
        expect(page.locator("#num-clients")).to_have_text("–")
    finally:
        server.should_exit = True
