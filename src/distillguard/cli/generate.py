"""`distillguard generate`: one watermarked completion, optionally with its detection."""

from __future__ import annotations

import json
from pathlib import Path

import click

from distillguard.cli.options import State, model_option, scheme_config, scheme_parameter_options

__all__ = ["generate"]


@click.command()
@click.argument("prompt")
@model_option
@click.option(
    "--tenant",
    default=None,
    help="Tenant whose watermark to weave in (default: demo, recorded on first use).",
)
@click.option("--no-watermark", is_flag=True, help="Generate without a watermark.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable, up to 4).")
@scheme_parameter_options
@click.option(
    "--detect",
    "run_detection",
    is_flag=True,
    help="Also test the completion for the tenant's watermark.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def generate(
    state: State,
    prompt: str,
    model_dir: Path | None,
    tenant: str | None,
    no_watermark: bool,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: tuple[str, ...],
    scheme: str,
    gamma: float,
    delta: float,
    context_width: int,
    seeding: str,
    run_detection: bool,
    as_json: bool,
) -> None:
    """Print a watermarked completion of PROMPT (and, with --detect, its detection).

    The key is the tenant's; without --tenant the "demo" tenant is used, and the master secret
    and its key commitment are created on first use.
    """
    from distillguard.engine.oneshot import generate_once
    from distillguard.engine.params import SamplingParams
    from distillguard.watermark.detector import log10_to_text

    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
    )
    result = generate_once(
        state.home,
        prompt,
        params,
        scheme_config(scheme, gamma, delta, context_width, seeding),
        model=model_dir,
        tenant=tenant,
        watermark=not no_watermark,
        detect=run_detection,
        database=state.database,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(result.text)
    detection = result.detection
    if result.watermark_key_id is None:
        click.echo("(not watermarked)", err=True)
    elif detection is not None:
        click.echo(
            f"watermark of {result.tenant} ({result.watermark_key_id}): "
            f"{detection.scored_tokens} tokens scored, "
            f"{detection.score:.0f} green (expected {detection.expected_score:.1f}), "
            f"p = {log10_to_text(detection.log10_p)}",
            err=True,
        )
