"""The token gate: bearer, ?token= (then a cookie), or 401; JSON under /api, HTML elsewhere."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dashboard.auth import COOKIE, cookie_value
from tests.dashboard import factories
from tests.dashboard.conftest import TOKEN, AppFactory

PROTECTED = ("/", "/runs/{run}", "/runs/{run}/plots/accuracy.svg", "/api/runs",
             "/api/runs/{run}", "/api/runs/{run}/rounds", "/api/ping", "/openapi.json",
             "/no/such/page")


@pytest.fixture
def run_id(memory_store: sessionmaker[Session]) -> str:
    with memory_store.begin() as s:
        run = factories.create_run(s)
        factories.commit_round(s, run, factories.round_record(1))
    return run


@pytest.mark.parametrize("path", PROTECTED)
def test_everything_but_static_needs_the_token(
    memory_app: AppFactory, run_id: str, path: str
) -> None:
    client = memory_app(token=TOKEN)
    response = client.get(path.format(run=run_id))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert run_id not in response.text and "digits-adam" not in response.text


def test_refusals_are_json_for_the_api_and_html_for_browsers(memory_app: AppFactory) -> None:
    client = memory_app(token=TOKEN)
    api = client.get("/api/runs")
    assert api.json() == {"detail": "a valid dashboard token is required"}
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "401" in page.text and "?token=" in page.text


def test_static_assets_are_open(memory_app: AppFactory) -> None:
    client = memory_app(token=TOKEN)
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/live.js").status_code == 200


def test_bearer_token(memory_app: AppFactory, run_id: str) -> None:
    client = memory_app(token=TOKEN)
    ok = client.get(f"/api/runs/{run_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["id"] == run_id
    bad = client.get("/api/runs", headers={"Authorization": "Bearer wrong-token-value"})
    assert bad.status_code == 401


def test_query_token_redirects_without_it_and_sets_an_httponly_cookie(
    memory_app: AppFactory, run_id: str
) -> None:
    client = memory_app(token=TOKEN)
    first = client.get(f"/runs/{run_id}", params={"token": TOKEN, "tab": "x"},
                       follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == f"/runs/{run_id}?tab=x"  # the token is dropped
    assert TOKEN not in first.text
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={cookie_value(TOKEN)}")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie  # the cookie holds a derived value, not the token
    assert client.get(f"/runs/{run_id}").status_code == 200  # the cookie jar carries it
    again = client.get("/", params={"token": TOKEN}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/"  # cookie or not
    assert client.get("/api/runs").status_code == 200
    client.cookies.clear()
    assert client.get("/api/runs").status_code == 401


def test_wrong_query_token_and_forged_cookie(memory_app: AppFactory) -> None:
    client = memory_app(token=TOKEN)
    assert client.get("/", params={"token": "not-the-token"}).status_code == 401
    client.cookies.set(COOKIE, cookie_value("another-token"))
    assert client.get("/").status_code == 401


def test_no_token_configured_means_open(memory_app: AppFactory, run_id: str) -> None:
    client = memory_app()
    assert client.get(f"/runs/{run_id}").status_code == 200
    assert "set-cookie" not in client.get("/", params={"token": TOKEN}).headers
