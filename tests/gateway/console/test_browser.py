"""The console in a real browser (Debian's chromium, driven by Playwright): sign in and see a
harvester flagged with its reasons, pin a tier with a reason and find it in the admin API,
have a forged change refused, and see every area render, with a job reporting back.

Screenshots of the pages go to $DISTILLGUARD_SCREENSHOTS (default build/console-screenshots).
Skipped where chromium or Playwright is missing; nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.monitor.monitor import Monitor
from distillguard.store import connect
from distillguard.store.chain import append_records
from distillguard.store.operators import create_operator
from distillguard.store.usage import UsageRecord

from .conftest import ADMIN_TOKEN, PASSWORD, fleet_events, make_console, risk_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium here (.ci/run installs it as root: apt-get install chromium)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")

SCREENSHOTS = Path(
    os.environ.get(
        "DISTILLGUARD_SCREENSHOTS",
        Path(__file__).resolve().parents[3] / "build" / "console-screenshots",
    )
)


@dataclass
class Site:
    url: str
    monitor: Monitor


def _usage(now: datetime) -> list[UsageRecord]:
    """An hour of requests: the harvester's long, many-sampled ones; ordinary ones; refusals."""
    records = []
    for minute in range(60):
        at = (now - timedelta(minutes=60 - minute)).isoformat(timespec="microseconds")
        for account, tenant, tokens, status in (
            ("k_harvest", "initech", 1600, 200), ("k_alice", "acme", 80, 200),
            ("k_ring0", "initech", 1400, 429 if minute % 5 == 0 else 200),
        ):  # fmt: skip
            records.append(
                UsageRecord(
                    request_id=f"req_{account}_{minute}", created_at=at.replace("+00:00", "Z"),
                    tenant=tenant, key_id=account, model="m", endpoint="chat.completions",
                    status=status, outcome="ok" if status == 200 else "rate_limited",
                    prompt_tokens=20 if status == 200 else 0,
                    completion_tokens=tokens if status == 200 else 0, latency_ms=40.0,
                    watermark_key_id="wk", fingerprint="fp",
                    parameters={"n": 4, "logprobs": True} if account != "k_alice" else {},
                    prompt_text=f"Explain step by step: item {minute}",
                    output_text='["Step 1: ..."]',
                )
            )  # fmt: skip
    return records


def _serve(app: Any) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A seeded fleet, watched over two hours of console time, served over real HTTP."""
    home = tmp_path_factory.mktemp("console-browser")
    offset = [-7200.0]
    monitor = Monitor(risk_model(), ring_every=10**9)
    console, admin = make_console(home, monitor, clock=lambda: time.time() + offset[0])
    connection = connect(home)
    create_operator(connection, "otto", "operator", PASSWORD)
    append_records(connection, _usage(datetime.now(UTC)), console.config.chain_key)
    connection.close()
    for chunk in range(4):  # the risk chart gets a point per step
        for item in fleet_events(chunk * 12, (chunk + 1) * 12):
            monitor.process(item)
        monitor.regroup()
        console.watch.step()
        offset[0] += 1800
    offset[0] = 0.0
    server, thread, url = _serve(admin.app())
    yield Site(url, monitor)
    server.should_exit = True
    thread.join()
    console.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def signed_in(browser: Any, site: Site, where: str = "/console/fleet") -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(site.url + where)
    page.get_by_label("Operator name").fill("otto")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return page


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_sign_in_and_see_the_harvester_flagged_with_its_reasons(browser: Any, site: Site) -> None:
    page = signed_in(browser, site, "/console/accounts?tier=block")
    assert page.url.endswith("/console/accounts?tier=block")  # back where sign-in was asked
    row = page.get_by_role("row").filter(has_text="k_harvest")
    sync_api.expect(row).to_contain_text("of requests ask for logprobs")
    sync_api.expect(row).to_contain_text("block")
    shot(page, "accounts")
    page.get_by_role("link", name="Fleet").click()
    sync_api.expect(page.get_by_role("heading", name="Top accounts by risk")).to_be_visible()
    shot(page, "fleet")


def test_pin_a_tier_with_a_reason_and_see_it_in_the_admin_api(browser: Any, site: Site) -> None:
    page = signed_in(browser, site, "/console/accounts/k_alice")
    page.get_by_label("New tier").select_option("throttle")
    page.get_by_label("Reason").fill("shares a template with ring 0")
    page.get_by_role("button", name="Set tier").click()
    sync_api.expect(page.get_by_role("status")).to_contain_text("Tier set to throttle")
    history = page.get_by_role("row").filter(has_text="shares a template with ring 0")
    sync_api.expect(history).to_contain_text("otto")
    shot(page, "account")
    admin = httpx.get(
        site.url + "/v1/admin/accounts", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    alice = next(row for row in admin.json()["data"] if row["account"] == "k_alice")
    assert (alice["tier"], alice["pinned"]) == ("throttle", True)


def test_a_change_without_or_with_a_wrong_csrf_token_is_refused(browser: Any, site: Site) -> None:
    page = signed_in(browser, site)
    target = site.url + "/console/accounts/k_bob/tier"
    for form in ({"tier": "block", "reason": "x"}, {"tier": "block", "reason": "x", "csrf": "no"}):
        response = page.request.post(target, form=form, max_redirects=0)
        assert response.status == 403 and "CSRF" in response.text()
    assert site.monitor.tier_of("k_bob") == "normal"


def test_every_area_renders_and_a_verification_reports_back(browser: Any, site: Site) -> None:
    page = signed_in(browser, site)
    for name, heading in (("rings", "Ring 0"), ("usage", "Usage and budgets"),
                          ("alerts", "Alerts"), ("evidence", "Evidence")):  # fmt: skip
        page.goto(f"{site.url}/console/{name}")
        sync_api.expect(page.get_by_role("heading", name=heading).first).to_be_visible()
        shot(page, name)
    page.goto(site.url + "/console/audit")
    page.get_by_role("button", name="Verify now").click()
    sync_api.expect(page.get_by_role("status")).to_contain_text(
        "The audit log is intact", timeout=60_000
    )  # the page's script polls the job, then shows its verdict
    shot(page, "job")
    page.get_by_role("link", name="Back").click()
    sync_api.expect(page.get_by_role("status").first).to_contain_text("Intact")
    shot(page, "audit")
