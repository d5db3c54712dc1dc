"""Assembling and running the gateway: `distillguard serve`.

One process by default: SQLite in the data directory, limits and the monitor in memory. With
a database URL (PostgreSQL) and a Redis URL, any number of processes (`serve_workers`, or
replicas on several machines) share keys, usage and one audit chain (the database), exact
limits (Redis) and the monitor (its event stream and tiers in Redis).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import httpx

from distillguard.config import data_dir
from distillguard.engine.engine import Engine
from distillguard.errors import ConfigError
from distillguard.gateway.apikeys import KeyStore, create_api_key, list_api_keys
from distillguard.gateway.app import Gateway, GatewaySettings
from distillguard.gateway.backends import Backend, LocalBackend, UpstreamBackend
from distillguard.gateway.backends.client import Upstream
from distillguard.gateway.backends.vllm import VllmBackend
from distillguard.gateway.budgets import Budgets
from distillguard.gateway.console import Console, ConsoleConfig
from distillguard.gateway.origin import TrustedProxies
from distillguard.gateway.policy import Policy, load_policy
from distillguard.gateway.ratelimit import Limits, RateLimiter, limiter_from_url
from distillguard.gateway.review import ReviewedMonitor
from distillguard.keys import derive_tenant_key, init_master_secret, record_commitment
from distillguard.keys.derive import journal_key, monitor_identity_key
from distillguard.keys.secret import MasterSecret
from distillguard.monitor.events import MonitorHook
from distillguard.monitor.history import TierHistory
from distillguard.monitor.identity import IdentityHasher
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.store import Connection, connect
from distillguard.store.anchoring import Anchorer
from distillguard.store.audit import AuditLog
from distillguard.store.base import describe
from distillguard.store.checkpoint import ANCHOR_FILE
from distillguard.store.integrity import current_chain_key
from distillguard.store.journal import Journal
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import SchemeConfig, tokenizer_fingerprint

__all__ = ["DEFAULT_IDENTITY_RETENTION_DAYS", "Server", "build_server"]

DEFAULT_IDENTITY_RETENTION_DAYS = 30.0  # how long the monitor keeps a client's tokens


@dataclass
class Server:
    gateway: Gateway
    engine: Engine | None
    audit: AuditLog
    connection: Connection
    demo_key: str | None  # the demo API key, when this start created it (shown once)
    monitor: Monitor | SharedMonitorLike | None = None
    limiter: RateLimiter | None = None
    anchorer: Anchorer | None = None
    console: Console | None = None  # with the tenants' budgets it keeps in force

    def close(self) -> None:
        """Flush the audit log, anchor its head, stop the console, the monitor and the engine."""
        if self.console is not None:
            self.console.close()
        if self.monitor is not None:
            self.monitor.close()
        self.audit.close()
        if self.anchorer is not None:
            self.anchorer.close()
        close_limiter = getattr(self.limiter, "close", None)
        if close_limiter is not None:
            close_limiter()
        if self.engine is not None:
            self.engine.close()
        self.connection.close()


class SharedMonitorLike(MonitorHook, Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


def _watermark_keys(
    home: Path, scheme: SchemeConfig, database: str | None
) -> Callable[[str], WatermarkKey | None]:
    """Tenant -> its watermark key; the commitment is recorded the first time it is used."""
    master, _ = init_master_secret(home)
    connection = connect(home, shared=True, url=database)
    cache: dict[str, WatermarkKey] = {}

    def key_for(tenant: str) -> WatermarkKey | None:
        key = cache.get(tenant)
        if key is None:
            derived = derive_tenant_key(master, tenant)
            record_commitment(connection, derived, scheme)
            key = cache[tenant] = derived.watermark_key()
        return key

    return key_for


def build_server(
    home: Path,
    model: Path | None = None,
    *,
    tenant_limits: Limits | None = None,
    max_body_bytes: int = 1 << 20,
    store_text: bool = True,
    demo_rpm: int = 60,
    demo_tpm: int = 100_000,
    upstream: str | None = None,
    upstream_api_key: str | None = None,
    monitor: bool = True,
    policy: Path | None = None,
    risk_model: Path | None = None,
    admin_token: str | None = None,
    database: str | None = None,
    redis: str | None = None,
    limiter_fail_open: bool = False,
    create_demo_key: bool = True,
    upstream_kind: str = "openai",
    upstream_tokenizer: Path | None = None,
    journal_fsync_ms: float = 0.0,
    journal_wait_ms: float = 1000.0,
    anchor: Path | None = None,
    anchor_seconds: float = 60.0,
    trusted_proxies: TrustedProxies | None = None,
    identity_retention_days: float = DEFAULT_IDENTITY_RETENTION_DAYS,
) -> Server:
    """The gateway on a model (or an upstream URL), with state in `home` (or `database`).

    Creates a demo API key if there is none (unless `create_demo_key` is off: replicas leave
    that to the process that starts them). In upstream mode the served model names are read
    from the upstream's /models once, at start. With `monitor`, the harvest monitor runs on a
    background thread; tiers recorded before a restart are restored; it forgets identity
    tokens `identity_retention_days` after it last saw them. The client address is the
    socket's peer, or what `trusted_proxies` forward. With `redis`, limits and the monitor are
    shared with every replica on that Redis. Records are journaled first.
    """
    if upstream_kind not in ("openai", "vllm"):
        raise ConfigError(f"unknown upstream kind {upstream_kind!r}: openai or vllm")
    if upstream_kind == "vllm" and upstream_tokenizer is None:
        raise ConfigError(
            "--upstream-kind vllm needs --upstream-tokenizer DIR: a local copy of the served "
            "model's directory (its tokenizer and config.json bind the watermark's fingerprint)"
        )
    rules = load_policy(policy)
    limiter = limiter_from_url(redis, fail_open=limiter_fail_open)
    watcher: Monitor | SharedMonitorLike | None = None
    if monitor:
        watcher = _monitor(home, database, redis, rules, risk_model, identity_retention_days)
    connection = connect(home, shared=True, url=database)
    engine: Engine | None = None
    backend: Backend[Any]
    if upstream:
        client = Upstream(upstream, api_key=upstream_api_key)
        served = _upstream_models(upstream, upstream_api_key)
        if upstream_kind == "vllm" and upstream_tokenizer is not None:
            backend = _vllm_backend(home, database, client, served, upstream_tokenizer)
        else:
            backend = UpstreamBackend(client, tuple(str(item["id"]) for item in served))
    else:
        engine = Engine(model)
        backend = LocalBackend(engine, _watermark_keys(home, engine.scheme, database))
    demo_key = None
    if create_demo_key and not list_api_keys(connection):
        demo_key, _ = create_api_key(connection, "demo", rpm=demo_rpm, tpm=demo_tpm)
    master = init_master_secret(home)[0]
    audit = _audit_log(home, database, master, store_text, journal_fsync_ms)
    anchorer = Anchorer(
        lambda: connect(home, url=database),
        master,
        anchor or data_dir(home) / ANCHOR_FILE,
        interval=anchor_seconds,
    )
    settings = GatewaySettings(
        tenant_limits=tenant_limits,
        tiers=rules.tiers,
        max_body_bytes=max_body_bytes,
        store_text=store_text,
        admin_token=admin_token,
        audit_wait=journal_wait_ms / 1000,
        trusted_proxies=trusted_proxies or TrustedProxies(),
    )
    identity = IdentityHasher(monitor_identity_key(master))
    gateway = Gateway(
        backend,
        KeyStore(connection),
        audit,
        settings,
        limiter=limiter,
        monitor=watcher,
        identity=identity,
    )
    if watcher is not None:
        watcher.start()
    anchor = anchor or data_dir(home) / ANCHOR_FILE
    console = _console(gateway, home, database, anchor, engine, upstream_tokenizer, rules.review)
    return Server(gateway, engine, audit, connection, demo_key, watcher, limiter, anchorer, console)


def _monitor(
    home: Path,
    database: str | None,
    redis: str | None,
    rules: Policy,
    risk_model: Path | None,
    identity_retention_days: float,
) -> Monitor | SharedMonitorLike:
    """The harvest monitor: the risk model under the policy's thresholds, its tier history
    restored (in this process, or through Redis for every replica), reviewed tiers held, and
    identity tokens forgotten `identity_retention_days` after they were last seen."""
    risk = RiskModel.load(risk_model)
    if rules.thresholds:
        risk = risk.with_thresholds(**rules.thresholds)
    history = TierHistory(lambda: connect(home, shared=True, url=database))
    retention = identity_retention_days * 86_400.0
    local = Monitor(risk, on_tier_change=history.record, identity_retention=retention)
    watcher: Monitor | SharedMonitorLike
    if redis is None:
        local.restore(history.latest())
        watcher = local
    else:
        from distillguard.monitor.shared import SharedMonitor

        watcher = SharedMonitor(local, redis, restore=history.latest)
    return _reviewed(watcher, rules.review, home, database)


def _reviewed(
    watcher: Monitor | SharedMonitorLike, review: tuple[str, ...], home: Path, database: str | None
) -> Monitor | SharedMonitorLike:
    """The monitor, holding the tiers the policy reviews until an operator confirms them."""
    if not review:
        return watcher
    return ReviewedMonitor(watcher, review, lambda: connect(home, shared=True, url=database))


def _console(
    gateway: Gateway,
    home: Path,
    database: str | None,
    anchor: Path,
    engine: Engine | None,
    upstream_tokenizer: Path | None,
    review: tuple[str, ...],
) -> Console:
    """The operator console, mounted on the admin listener (`gateway.admin.app()`), and the
    tenants' monthly budgets it sets, put in force on `gateway` (read per request from its
    settings). The alert webhook, and Secure cookies behind a TLS-terminating proxy, come from
    the environment: DISTILLGUARD_ALERT_WEBHOOK, DISTILLGUARD_CONSOLE_SECURE_COOKIES=1."""
    budgets = Budgets(lambda: connect(home, shared=True, url=database))
    budgets.start()
    gateway.settings = replace(gateway.settings, monthly_budget=budgets.monthly_tokens)
    config = ConsoleConfig(
        home=home,
        database=database,
        anchor=anchor,
        chain_key=current_chain_key(init_master_secret(home)[0]),
        model=engine.loaded.path if engine is not None else upstream_tokenizer,
        scheme=engine.scheme if engine is not None else SchemeConfig(),
        store_text=gateway.settings.store_text,
        webhook=os.environ.get("DISTILLGUARD_ALERT_WEBHOOK") or None,
        secure_cookies=os.environ.get("DISTILLGUARD_CONSOLE_SECURE_COOKIES") == "1",
        review=review,
    )
    console = Console(
        config,
        lambda: gateway.monitor,
        lambda: connect(home, shared=True, url=database),
        budgets=budgets,
    )
    gateway.admin.mount(console)
    console.start()
    return console


def _audit_log(
    home: Path, database: str | None, master: MasterSecret, store_text: bool, fsync_ms: float
) -> AuditLog:
    """The audit writer: keyed chain, journal (MACed lines) and its dead-letter file."""
    return AuditLog(
        lambda: connect(home, url=database),
        store_text=store_text,
        chain_key=current_chain_key(master),
        journal=Journal(
            journal_directory(home, database), key=journal_key(master), fsync_ms=fsync_ms
        ),
    )


def journal_directory(home: Path, database: str | None) -> Path:
    """Where this machine's gateway processes journal their usage records for `database`:
    one folder per database, so that a journal is only ever replayed into its own. Each
    record is journaled before its answer leaves, fsynced every `journal_fsync_ms` (0: never);
    an answer waits at most `journal_wait_ms` for that (`build_server`)."""
    store = hashlib.sha256(describe(database).encode()).hexdigest()[:16]
    return data_dir(home) / "journal" / store


def prepare_home(
    home: Path, database: str | None = None, *, demo_rpm: int = 60, demo_tpm: int = 100_000
) -> str | None:
    """What one process does before replicas start: the master secret, the migrations and,
    when there is no API key yet, the demo key (returned once; else None)."""
    init_master_secret(home)
    connection = connect(home, url=database)
    try:
        if list_api_keys(connection):
            return None
        demo_key, _ = create_api_key(connection, "demo", rpm=demo_rpm, tpm=demo_tpm)
        return demo_key
    finally:
        connection.close()


def _upstream_models(url: str, api_key: str | None) -> list[dict[str, Any]]:
    """The upstream's /models entries (id, and for vLLM its `root` and `max_model_len`)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=30.0)
        response.raise_for_status()
        served = [dict(item) for item in response.json()["data"]]
        for item in served:
            str(item["id"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot list the upstream's models at {url}/models: {exc}") from None
    if not served:
        raise ConfigError(f"the upstream at {url} serves no models")
    return served


def _vllm_backend(
    home: Path,
    database: str | None,
    client: Upstream,
    served: list[dict[str, Any]],
    tokenizer_dir: Path,
) -> VllmBackend:
    """The vLLM backend, its scheme bound to the served tokenizer and logits width.

    The tokenizer comes from a local copy of the served model (`tokenizer_dir`); when vLLM's
    /models names a directory that exists here, it must hold the same tokenizer and width, so
    that the fingerprint in every usage row is the served model's.
    """
    tokenizer, width = _tokenizer_and_width(tokenizer_dir)
    scheme = SchemeConfig().bind(width, tokenizer_fingerprint(tokenizer))
    for item in served:
        root = Path(str(item.get("root") or ""))
        if root.is_dir() and (root / "config.json").is_file():
            served_tokenizer, served_width = _tokenizer_and_width(root)
            served_scheme = SchemeConfig().bind(
                served_width, tokenizer_fingerprint(served_tokenizer)
            )
            if served_scheme.fingerprint != scheme.fingerprint:
                raise ConfigError(
                    f"the upstream serves {root}, whose tokenizer or logits width differs from "
                    f"{tokenizer_dir}: the watermark's fingerprint would name the wrong model"
                )
    lengths = [int(item["max_model_len"]) for item in served if item.get("max_model_len")]
    return VllmBackend(
        client,
        tuple(str(item["id"]) for item in served),
        master=init_master_secret(home)[0],
        scheme=scheme,
        tokenizer=tokenizer,
        watermark_key_for=_watermark_keys(home, scheme, database),
        max_tokens=min(lengths) if lengths else 4096,
    )


def _tokenizer_and_width(directory: Path) -> tuple[Any, int]:
    """A model directory's `transformers` tokenizer and its logits width (config vocab_size)."""
    from distillguard.engine.model import load_model_tokenizer

    return load_model_tokenizer(directory)
