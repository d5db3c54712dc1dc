"""`distillguard serve`: the OpenAI-compatible gateway."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from distillguard.cli.options import State, model_option
from distillguard.errors import ConfigError, require
from distillguard.store.timestamp import TSA_CERT_ENV, TSA_ENV

__all__ = ["serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@model_option
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True)
@click.option(
    "--no-store-text", is_flag=True, help="Do not keep prompt and output text in the usage log."
)
@click.option("--tenant-rpm", type=int, default=None, help="Requests per minute per tenant.")
@click.option("--tenant-tpm", type=int, default=None, help="Tokens per minute per tenant.")
@click.option(
    "--upstream",
    default=None,
    help="Proxy this OpenAI-compatible base URL (e.g. http://host:8001/v1) instead of a local "
    "model. Its key is read from DISTILLGUARD_UPSTREAM_API_KEY.",
)
@click.option(
    "--upstream-kind",
    type=click.Choice(["openai", "vllm"]),
    default="openai",
    show_default=True,
    help="openai: any OpenAI-compatible server, outputs not watermarked. vllm: a vLLM server "
    "running distillguard's TenantWatermark processor, which marks each tenant's outputs "
    "(docs/vllm.md).",
)
@click.option(
    "--upstream-tokenizer",
    type=click.Path(path_type=Path),
    default=None,
    help="With --upstream-kind vllm: a local copy of the served model's directory (tokenizer, "
    "chat template, config.json), which binds the watermark's fingerprint.",
)
@click.option("--no-monitor", is_flag=True, help="Do not run the harvest monitor.")
@click.option(
    "--anchor",
    type=click.Path(path_type=Path),
    envvar="DISTILLGUARD_ANCHOR",
    default=None,
    help="Append-only file for the audit chain's signed checkpoints, to ship where the "
    "database's owner cannot rewrite it [env DISTILLGUARD_ANCHOR]. Default: "
    "anchor/checkpoints.jsonl in the data directory.",
)
@click.option(
    "--anchor-seconds",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Anchor a checkpoint this often when the chain has grown (and always at shutdown).",
)
@click.option(
    "--anchor-tsa",
    envvar=TSA_ENV,
    default=None,
    metavar="URL",
    help="An RFC 3161 time-stamping authority that timestamps every checkpoint [env "
    f"{TSA_ENV}]. A checkpoint the TSA fails to stamp is anchored without it, and logged.",
)
@click.option(
    "--anchor-tsa-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=TSA_CERT_ENV,
    default=None,
    help="PEM file with the TSA's root CA certificate: each token is checked against it "
    f"before it is kept [env {TSA_CERT_ENV}].",
)
@click.option(
    "--policy",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file: what each tier does and the score thresholds (docs/deployment.md).",
)
@click.option(
    "--risk-model",
    type=click.Path(path_type=Path),
    default=None,
    help="Risk model JSON (benchmarks/monitor.py --write-model). Default: the shipped one.",
)
@click.option(
    "--redis",
    envvar="DISTILLGUARD_REDIS_URL",
    default=None,
    help="Redis URL (redis://host:6379/0) for rate limits and monitor state shared by every "
    "replica [env DISTILLGUARD_REDIS_URL]. Default: in this process's memory.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Gateway processes on this port (more than 1 needs --redis).",
)
@click.option(
    "--limiter-fail-open",
    is_flag=True,
    help="When Redis is unreachable, admit requests uncounted instead of answering 503.",
)
@click.option(
    "--journal-fsync-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="fsync the audit journal (at most once every this many milliseconds; one fsync covers "
    "everything written meanwhile) and hold each answer until its record is fsynced: answered "
    "requests then survive a host crash, not only a killed process. 0: never fsync (the page "
    "cache survives kill -9, not a power cut).",
)
@click.option(
    "--admin-host",
    default="127.0.0.1",
    show_default=True,
    help="Address of the admin API's own listener (keep it private: 127.0.0.1 or an internal "
    "interface).",
)
@click.option(
    "--admin-port",
    type=click.IntRange(min=0, max=65535),
    default=8001,
    show_default=True,
    help="Port of the admin API's listener; 0 turns the listener off.",
)
@click.option(
    "--journal-wait-ms",
    type=click.FloatRange(min=0),
    default=1000.0,
    show_default=True,
    help="The most an answer waits for its usage record to be safe (journaled and fsynced, or "
    "committed while the database lags); past it the answer is a 503 audit_unavailable.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    envvar="DISTILLGUARD_TRUSTED_PROXIES",
    metavar="CIDR",
    help="A proxy or load balancer in front of the gateway (address or CIDR; repeatable) [env "
    "DISTILLGUARD_TRUSTED_PROXIES, space-separated]. Only for requests from these is the "
    "client address read from --proxy-header; otherwise it is the socket's peer.",
)
@click.option(
    "--proxy-header",
    type=click.Choice(["x-forwarded-for", "forwarded"]),
    envvar="DISTILLGUARD_PROXY_HEADER",
    default="x-forwarded-for",
    show_default=True,
    help="The header the trusted proxies append the client's address to (forwarded: RFC 7239 "
    "for=) [env DISTILLGUARD_PROXY_HEADER]. The other one is ignored: clients can send it.",
)
@click.option(
    "--identity-retention-days",
    type=click.FloatRange(min=0, min_open=True),
    envvar="DISTILLGUARD_IDENTITY_RETENTION_DAYS",
    default=30.0,
    show_default=True,
    help="The monitor forgets a client's identity tokens (keyed hashes of its address, network, "
    "user agent, header order) this many days after it last saw them [env "
    "DISTILLGUARD_IDENTITY_RETENTION_DAYS].",
)
@click.pass_obj
def serve(
    state: State,
    host: str,
    port: int,
    model_dir: Path | None,
    max_body_bytes: int,
    no_store_text: bool,
    tenant_rpm: int | None,
    tenant_tpm: int | None,
    upstream: str | None,
    upstream_kind: str,
    upstream_tokenizer: Path | None,
    no_monitor: bool,
    anchor: Path | None,
    anchor_seconds: float,
    anchor_tsa: str | None,
    anchor_tsa_cert: Path | None,
    policy: Path | None,
    risk_model: Path | None,
    redis: str | None,
    workers: int,
    limiter_fail_open: bool,
    journal_fsync_ms: float,
    admin_host: str,
    admin_port: int,
    journal_wait_ms: float,
    trusted_proxies: tuple[str, ...],
    proxy_header: str,
    identity_retention_days: float,
) -> None:
    """Run the OpenAI-compatible gateway (the embedded model unless --model or --upstream).

    State lives in the data directory (SQLite), or in PostgreSQL with --database. Several
    processes (--workers N, or replicas on other machines) share one PostgreSQL or SQLite
    store and one Redis: limits stay exact across all of them, the audit log stays one chain,
    and the monitor sees all traffic. Each process journals every usage record to a file in
    the data directory before answering, and commits it to the database in the background;
    at start, journals left by dead processes are replayed. On first start it creates the
    master secret and a demo API key, printed once. The harvest monitor watches every key and
    moves harvesters up the tiers (watch, throttle, block); behind a load balancer, name it
    with --trusted-proxy so that the monitor tells clients apart. The admin API
    (/v1/admin/...) listens on its own address (--admin-host, --admin-port) and is on when
    DISTILLGUARD_ADMIN_TOKEN is set; requests to it carry that token as a bearer token.
    """
    require("uvicorn", "gateway")

    from distillguard.gateway.admin_client import admin_token_from_env
    from distillguard.gateway.listeners import Listener, run_listeners
    from distillguard.gateway.origin import TrustedProxies
    from distillguard.gateway.server import build_server

    _check_pairings(upstream_kind, upstream, workers, redis)
    _hand_tsa_to_anchorer(anchor_tsa, anchor_tsa_cert)
    options: dict[str, Any] = {
        "home": state.home,
        "model": model_dir,
        "max_body_bytes": max_body_bytes,
        "store_text": not no_store_text,
        "upstream": upstream,
        "upstream_api_key": os.environ.get("DISTILLGUARD_UPSTREAM_API_KEY"),
        "upstream_kind": upstream_kind,
        "upstream_tokenizer": upstream_tokenizer,
        "tenant_limits": _tenant_limits(tenant_rpm, tenant_tpm),
        "monitor": not no_monitor,
        "anchor": anchor,
        "anchor_seconds": anchor_seconds,
        "policy": policy,
        "risk_model": risk_model,
        "admin_token": admin_token_from_env(),
        "database": state.database,
        "redis": redis,
        "limiter_fail_open": limiter_fail_open,
        "journal_fsync_ms": journal_fsync_ms,
        "journal_wait_ms": journal_wait_ms,
        "trusted_proxies": TrustedProxies.parse(trusted_proxies, proxy_header),
        "identity_retention_days": identity_retention_days,
    }
    if workers > 1:
        _serve_workers(
            options, host, port, workers, (admin_host, admin_port) if admin_port else None
        )
        return
    server = build_server(**options)
    if server.demo_key is not None:
        click.echo(f"demo API key (tenant demo, shown once): {server.demo_key}")
    names = ", ".join(server.gateway.model_names)
    click.echo(f"serving {names} on http://{host}:{port}/v1", err=True)
    if admin_port:
        click.echo(f"admin API on http://{admin_host}:{admin_port}/v1/admin", err=True)
    try:
        run_listeners(
            Listener(server.gateway.app, host, port),
            Listener(server.gateway.admin.app(), admin_host, admin_port) if admin_port else None,
        )
    finally:
        server.close()


def _check_pairings(
    upstream_kind: str, upstream: str | None, workers: int, redis: str | None
) -> None:
    """Options that need another one, refused in one line before anything starts."""
    if upstream_kind == "vllm" and not upstream:
        raise ConfigError("--upstream-kind vllm needs --upstream URL: the vLLM server to proxy")
    if workers > 1 and not redis:
        raise ConfigError(
            "--workers above 1 needs --redis: limits and the monitor must be shared by the workers"
        )


def _serve_workers(
    options: dict[str, Any], host: str, port: int, workers: int, admin: tuple[str, int] | None
) -> None:
    """`workers` gateway processes on one port, after the one-time preparation of the home."""
    from distillguard.gateway.server import prepare_home
    from distillguard.gateway.workers import serve_workers

    demo_key = prepare_home(options["home"], options["database"])
    if demo_key is not None:
        click.echo(f"demo API key (tenant demo, shown once): {demo_key}")
    click.echo(f"serving on http://{host}:{port}/v1 with {workers} workers", err=True)
    serve_workers(options, host, port, workers, admin=admin)


def _hand_tsa_to_anchorer(url: str | None, cert: Path | None) -> None:
    """Check the TSA settings now (one line if they are wrong), then pass them on through the
    environment: every process's checkpoint writer (workers too) reads them from there."""
    from distillguard.store.timestamp import TimestampAuthority, load_tsa_trust

    if url is None:
        return
    TimestampAuthority(url, load_tsa_trust(cert) if cert is not None else None)
    os.environ[TSA_ENV] = url
    if cert is not None:
        os.environ[TSA_CERT_ENV] = str(cert.resolve())


def _tenant_limits(rpm: int | None, tpm: int | None) -> Any:
    if rpm is None and tpm is None:
        return None
    from distillguard.gateway.ratelimit import Limits

    return Limits(rpm if rpm is not None else 10**9, tpm if tpm is not None else 10**12)
