"""A console over a real monitor and store, its operators, and a signed-in browser stand-in
(Starlette's TestClient keeps the cookies)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pytest

pytest.importorskip("jinja2")

from starlette.testclient import TestClient

from distillguard.gateway.admin import AdminApi
from distillguard.gateway.console import AuthSettings, Console, ConsoleConfig
from distillguard.keys import init_master_secret
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import FEATURES
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.store import Connection, connect
from distillguard.store.integrity import current_chain_key
from distillguard.store.operators import create_operator

PASSWORD = "a long enough password"
ADMIN_TOKEN = "test-admin-token"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def risk_model() -> RiskModel:
    """A model over today's signals: logprobs, n > 1 and long outputs weigh most (the shipped
    model is refitted as the signals change; these tests must not depend on its weights)."""
    heavy = {"logprobs": 3.0, "multiple_samples": 3.0, "maximal_max_tokens": 2.0}
    return RiskModel(
        features=tuple(signal.name for signal in FEATURES),
        weights=tuple(heavy.get(signal.name, 0.0) for signal in FEATURES),
        bias=-4.0,
        means=tuple(signal.prior for signal in FEATURES),
        scales=tuple(0.1 for _ in FEATURES),
        watch=0.5,
        flag=0.8,
        block=0.95,
        min_requests=5,
        block_min_requests=20,
    )


def event(account: str, tenant: str, index: int, *, harvester: bool) -> MonitorEvent:
    return MonitorEvent(
        time=1_700_000_000.0 + index * 30,
        account=account,
        tenant=tenant,
        prompt=f"question {index} about topic {index % 7}",
        turns=1 if harvester else 2,
        prompt_tokens=12,
        completion_tokens=400 if harvester else 60,
        max_tokens=1024 if harvester else 128,
        max_tokens_cap=1024,
        n=4 if harvester else 1,
        logprobs=harvester,
        status=200,
    )


def _identified(event: MonitorEvent, **identity: object) -> MonitorEvent:
    """The event with the request-metadata fields its MonitorEvent carries (the monitor's
    network identity fields arrive with issue 18's work; until then the ring is found by its
    shared template alone)."""
    known = {item.name for item in fields(MonitorEvent)}
    return replace(event, **{name: value for name, value in identity.items() if name in known})


def ring_event(member: int, index: int) -> MonitorEvent:
    """A ring member's request: the harvest, from one proxy network and client, on a template."""
    base = event(f"k_ring{member}", "initech", index, harvester=True)
    base = replace(
        base, time=base.time + member * 3, prompt=f"Explain step by step: item {index * 7 + member}"
    )
    return _identified(
        base,
        address=f"10.0.0.{member}",
        network="net-1",
        agent="python-requests/2.31",
        header_fingerprint="hf-1",
        org="org-x",
        signup_program="startup",
        created_at=1_699_999_000.0,
    )


def fleet_events(start: int, stop: int) -> list[MonitorEvent]:
    """A small seeded fleet: four ordinary users, one harvester, a ring of six."""
    found = []
    for index in range(start, stop):
        for account in ("k_alice", "k_bob", "k_carol", "k_dave"):
            ordinary = event(account, "acme", index, harvester=False)
            found.append(
                _identified(ordinary, network=f"home-{account}", agent=f"browser-{account}")
            )
        found.append(event("k_harvest", "initech", index, harvester=True))
        found.extend(ring_event(member, index) for member in range(6))
    return found


def seeded_monitor() -> Monitor:
    """Three ordinary accounts and one harvester (k_harvest), processed."""
    monitor = Monitor(risk_model(), ring_every=10**9)
    for index in range(40):
        for account in ("k_alice", "k_bob", "k_carol"):
            monitor.process(event(account, "acme", index, harvester=False))
        monitor.process(event("k_harvest", "initech", index, harvester=True))
    return monitor


@dataclass
class ConsoleHarness:
    console: Console
    admin: AdminApi
    monitor: Monitor
    home: Path
    opened: list[Connection] = field(default_factory=list)

    def client(self) -> TestClient:
        return TestClient(self.admin.app(), base_url="http://testserver")

    def connect(self) -> Connection:
        self.opened.append(connect(self.home, shared=True))
        return self.opened[-1]


def make_console(
    home: Path,
    monitor: Monitor,
    *,
    url: str | None = None,
    auth: AuthSettings | None = None,
    clock: Callable[[], float] | None = None,
    **config: object,
) -> tuple[Console, AdminApi]:
    master, _ = init_master_secret(home)
    settings = ConsoleConfig(
        home=home,
        database=url,
        chain_key=current_chain_key(master),
        risk_model=monitor.model,
        watch_seconds=3600.0,
        auth=auth or AuthSettings(),
        **config,  # type: ignore[arg-type]
    )
    extra = {"clock": clock} if clock is not None else {}
    console = Console(
        settings, lambda: monitor, lambda: connect(home, shared=True, url=url), **extra
    )
    admin = AdminApi(ADMIN_TOKEN, lambda: monitor)  # type: ignore[arg-type, return-value]
    admin.mount(console)
    return console, admin


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ConsoleHarness]:
    monitor = seeded_monitor()
    console, admin = make_console(tmp_path, monitor)
    connection = connect(tmp_path)
    for name, role in (("ada", "admin"), ("otto", "operator"), ("vera", "viewer")):
        create_operator(connection, name, role, PASSWORD)
    connection.close()
    found = ConsoleHarness(console, admin, monitor, tmp_path)
    yield found
    console.close()
    for opened in found.opened:
        opened.close()


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Sign `name` in; the session's CSRF token (from the page signed in to)."""
    form = client.get("/console/login")
    response = client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "name": name, "password": password},
    )
    assert response.status_code == 200, response.text
    return csrf_of(response.text)
