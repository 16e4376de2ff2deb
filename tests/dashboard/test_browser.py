"""The dashboard in real headless Chromium (Playwright), served by uvicorn on 127.0.0.1.

Set FEDMERGE_UPDATE_SCREENSHOT=1 to refresh docs/dashboard-run.png from the real run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import repo
from dashboard.server import serve_in_thread
from tests.dashboard import factories
from tests.dashboard.conftest import TOKEN, RealRun
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

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


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
    assert page.locator("#central-accuracy use").count() == len(central)
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
        thread = threading.Thread(target=coordinator, daemon=True)
        thread.start()
        expect(page.locator("#rounds-done")).to_have_text("4", timeout=20_000)
        thread.join(timeout=10)
        assert not errors, errors
        assert page.evaluate("window.__sameDocument === true")  # no reload happened
        # The plots were fetched again too: rounds 0-4 on the central accuracy line.
        expect(page.locator("#central-accuracy use")).to_have_count(5, timeout=10_000)
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
        again = page.goto(f"{base}/")  # the HttpOnly cookie carries the session now
        assert again is not None and again.status == 200
        expect(page.get_by_role("link", name=run_id[:8])).to_be_visible()
    finally:
        server.should_exit = True
