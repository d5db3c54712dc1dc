"""An audit of a suspect model: what `distillguard audit suspect` runs.

The evidence comes from our own records: the usage log holds every watermarked prompt and
output the gateway served, with the tenant, the watermark key id and the scheme fingerprint.
A black-box audit queries the suspect's OpenAI-compatible API with logged prompts (or a
supplied set). An open-weights audit teacher-forces the logged outputs through a local model
directory. Both test every tenant's key. A control run on a reference model goes beside them:
a model that never saw our outputs, audited the same way. In open-weights mode the reference
also anchors the strongest statistic, the suspect's shift of probability towards green tokens
relative to the reference.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError, InputError
from distillguard.redact import redact
from distillguard.store.base import Connection
from distillguard.store.usage import read_usage
from distillguard.watermark.scheme import SchemeConfig, tokenizer_fingerprint
from distillguard.watermark.vocab import load_tokenizer

__all__ = [
    "AuditOutcome",
    "LoggedTraffic",
    "audit_suspect",
    "load_logged",
    "query_suspect",
    "run_audit",
]


@dataclass(frozen=True)
class LoggedTraffic:
    prompts: list[str]
    outputs: list[str]  # the first choice of each logged response
    tenants: list[str]
    fingerprints: set[str]


def load_logged(
    connection: Connection, *, tenant: str | None = None, limit: int | None = None
) -> LoggedTraffic:
    """Watermarked traffic served with success, in the order it was logged."""
    prompts, outputs, tenants = [], [], []
    fingerprints: set[str] = set()
    for row in read_usage(connection, tenant=tenant):
        if row.status != 200 or not row.watermark_key_id or not row.output_text:
            continue
        texts = json.loads(row.output_text)
        if not texts or not texts[0]:
            continue
        prompts.append(row.prompt_text)
        outputs.append(str(texts[0]))
        tenants.append(row.tenant)
        if row.fingerprint:
            fingerprints.add(row.fingerprint)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        who = f"tenant {tenant!r}" if tenant else "any tenant"
        raise InputError(
            f"no watermarked traffic with text is logged for {who}: nothing to audit with"
        )
    return LoggedTraffic(prompts, outputs, tenants, fingerprints)


def query_suspect(
    url: str,
    model: str,
    prompts: Sequence[str],
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    api_key: str | None = None,
    concurrency: int = 16,
    transport: Any = None,
) -> list[str]:
    """The suspect's completion for each prompt (legacy completions endpoint; empty on errors
    of single requests, an error when the suspect cannot be reached at all)."""
    import httpx

    async def run() -> list[str]:
        limit = asyncio.Semaphore(concurrency)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        failures = 0
        async with httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=600, transport=transport
        ) as client:

            async def one(prompt: str) -> str:
                nonlocal failures
                async with limit:
                    try:
                        response = await client.post(
                            "/completions",
                            json={
                                "model": model,
                                "prompt": prompt,
                                "max_tokens": max_tokens,
                                "temperature": temperature,
                            },
                        )
                    except httpx.HTTPError as exc:
                        failures += 1
                        if failures > len(prompts) // 2:
                            raise ConfigError(
                                redact(f"cannot query the suspect at {url}: {exc}")
                            ) from None
                        return ""
                if response.status_code != 200:
                    failures += 1
                    return ""
                choices = response.json().get("choices") or [{}]
                return str(choices[0].get("text") or "")

            return list(await asyncio.gather(*(one(prompt) for prompt in prompts)))

    outputs = asyncio.run(run())
    if not any(outputs):
        raise ConfigError(
            redact(f"the suspect at {url} returned no completions for model {model!r}")
        )
    return outputs


def load_suspect_weights(path: Path) -> Any:
    """A local Hugging Face causal LM directory, on the CPU, in eval mode.

    The files are the adversary's: weights load from safetensors only (a pickle runs code
    when it is read) and nothing is fetched from a hub. A directory with only pickled weights
    (pytorch_model.bin) is refused before anything in it is opened."""
    from distillguard.errors import ModelLoadError, require

    require("transformers", "model")
    from transformers import AutoModelForCausalLM

    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory} is not a model directory")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        found = f" (it holds {', '.join(pickled)}: pickled weights)" if pickled else ""
        raise ModelLoadError(
            f"{directory} has no safetensors weights{found}; suspect models load from "
            "safetensors only, never from a pickle: convert them in a sandbox first"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load a causal language model from {directory}: {first_line}"
        ) from None
    model.eval()  # type: ignore[no-untyped-call]
    return model


@dataclass(frozen=True)
class AuditOutcome:
    """Results of one audit and its control, with what produced them."""

    mode: str
    suspect: str
    reference: str | None
    results: list[Any]  # RadioactivityResult: the suspect's tests
    controls: list[Any]  # the same tests on the reference model
    parameters: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "suspect": self.suspect,
            "reference": self.reference,
            "parameters": self.parameters,
            "results": [_result_json(result) for result in self.results],
            "controls": [_result_json(result) for result in self.controls],
        }

    def to_text(self) -> str:
        from distillguard.watermark.detector import log10_to_text

        lines = [f"{self.mode} audit of {self.suspect}"]
        for label, group in (("suspect", self.results), ("control", self.controls)):
            for result in group:
                best = result.attribution.ranking[0]
                detection = best.detection
                lines.append(
                    f"{label:<8} {result.statistic:<16} scored {result.scored:>7}  "
                    f"best {detection.tenant or detection.key_id}: score {detection.score:.1f} "
                    f"vs {detection.expected_score:.1f} expected, "
                    f"p {log10_to_text(detection.log10_p)}, "
                    f"{log10_to_text(best.adjusted_log10_p)} after Holm over "
                    f"{result.attribution.keys_tested} tenants"
                    + ("" if result.exact else " (Chernoff bound)")
                )
        return "\n".join(lines)


def _result_json(result: Any) -> dict[str, Any]:
    best = result.attribution.ranking[0]
    return {
        "mode": result.mode,
        "statistic": result.statistic,
        "exact": result.exact,
        "scored": result.scored,
        "dropped": result.dropped,
        "curve": [list(point) for point in result.curve],
        "best": {
            "tenant": best.detection.tenant,
            "key_id": best.detection.key_id,
            "score": best.detection.score,
            "expected": best.detection.expected_score,
            "log10_p": best.detection.log10_p,
            "adjusted_log10_p": best.adjusted_log10_p,
        },
        "keys": [
            {
                "tenant": detection.tenant,
                "key_id": detection.key_id,
                "score": detection.score,
                "expected": detection.expected_score,
                "log10_p": detection.log10_p,
            }
            for detection in result.detections
        ],
    }


def tenant_keys(
    home: Path, config: Any, key_version: int = 1, *, database: str | None = None
) -> list[Any]:
    """The watermark key of every tenant with a recorded commitment under this scheme."""
    from contextlib import closing

    from distillguard.errors import FingerprintMismatchError, KeyNotFoundError
    from distillguard.keys import derive_tenant_key, load_master_secret, recorded_commitments
    from distillguard.store import connect

    master = load_master_secret(home)
    with closing(connect(home, url=database)) as connection:
        recorded = [c for c in recorded_commitments(connection) if c.key_version == key_version]
    if not recorded:
        raise KeyNotFoundError("no tenant keys are recorded in this data directory")
    accepted = {config.fingerprint, config.unbound().fingerprint}
    names = sorted({c.tenant for c in recorded if c.fingerprint in accepted})
    if not names:
        raise FingerprintMismatchError(
            f"no tenant was keyed under scheme {config.fingerprint}: pass the scheme options and "
            "tokenizer the gateway used"
        )
    return [derive_tenant_key(master, name, key_version).watermark_key() for name in names]


def audit_suspect(
    home: Path,
    scheme: SchemeConfig,
    our_model: Path,
    *,
    url: str | None = None,
    suspect_model: str | None = None,
    weights: Path | None = None,
    reference: str | None = None,
    base: Path | None = None,
    tenant: str | None = None,
    prompts_file: Path | None = None,
    queries: int = 2000,
    max_tokens: int = 64,
    contexts: int = 20_000,
    api_key: str | None = None,
    reference_api_key: str | None = None,
    database: str | None = None,
) -> AuditOutcome:
    """What `distillguard audit suspect` runs: check the options, bind `scheme` to the
    tokenizer of `our_model` (the served model's directory, or its tokenizer.json), and run
    the audit.

    The options are checked before anything is loaded; the messages name the command's
    options, which are these keywords."""
    if (url is None) == (weights is None):
        raise InputError("give either --url (black-box) or --weights (open weights)")
    if url is not None and not suspect_model:
        raise InputError("--suspect-model is required with --url")
    if base is not None and url is None:
        raise InputError("--base is for black-box audits (--url); with --weights use --reference")
    if queries < 1 or contexts < 1 or max_tokens < 1:
        raise InputError("--queries, --contexts and --max-tokens must be positive")
    tokenizer, vocab_size = load_tokenizer(our_model)
    config = scheme.bind(vocab_size, tokenizer_fingerprint(tokenizer))
    return run_audit(
        home,
        config,
        tokenizer,
        database=database,
        url=url,
        suspect_model=suspect_model,
        weights=weights,
        reference=reference,
        base=base,
        our_model=our_model,
        tenant=tenant,
        prompts_file=prompts_file,
        queries=queries,
        max_tokens=max_tokens,
        contexts=contexts,
        api_key=api_key,
        reference_api_key=reference_api_key,
    )


def run_audit(
    home: Path,
    config: Any,
    tokenizer: Any,
    *,
    url: str | None = None,
    suspect_model: str | None = None,
    weights: Path | None = None,
    reference: str | None = None,
    base: Path | None = None,
    our_model: Path | None = None,
    tenant: str | None = None,
    prompts_file: Path | None = None,
    queries: int = 2000,
    max_tokens: int = 64,
    contexts: int = 20_000,
    api_key: str | None = None,
    reference_api_key: str | None = None,
    database: str | None = None,
) -> AuditOutcome:
    """Audit a suspect (black-box by URL, or open weights by directory) and its control.

    Black-box with `base` (the suspect's base model) and `our_model` (the served model's
    directory): the focused test leads, the plain one follows."""
    from distillguard.forensics.prompts import load_prompts

    keys = tenant_keys(home, config, database=database)
    logged = _logged_under(home, config, tenant=tenant, database=database)
    parameters: dict[str, Any] = {
        "scheme_fingerprint": config.fingerprint,
        "gamma": config.gamma,
        "delta": config.delta,
        "context_width": config.context_width,
        "tenants_tested": len(keys),
        "logged_tenant": tenant,
    }
    if url is not None:
        prompts = load_prompts(prompts_file) if prompts_file is not None else logged.prompts
        return _black_box_audit(
            config,
            keys,
            tokenizer,
            prompts[:queries],
            parameters,
            url=url,
            suspect_model=str(suspect_model),
            reference=reference,
            base=base,
            our_model=our_model,
            max_tokens=max_tokens,
            api_key=api_key,
            reference_api_key=reference_api_key,
        )
    if weights is None:
        raise InputError("give a suspect URL or a weights directory")
    return _open_weights_audit(
        config, keys, tokenizer, logged, parameters, weights, reference=reference, contexts=contexts
    )


def _logged_under(
    home: Path, config: SchemeConfig, *, tenant: str | None, database: str | None
) -> LoggedTraffic:
    """The logged traffic, which must have been watermarked under `config`'s scheme."""
    from contextlib import closing

    from distillguard.errors import FingerprintMismatchError
    from distillguard.store import connect

    with closing(connect(home, url=database)) as connection:
        logged = load_logged(connection, tenant=tenant)
    if logged.fingerprints and config.fingerprint not in logged.fingerprints:
        raise FingerprintMismatchError(
            f"the logged outputs were watermarked under {sorted(logged.fingerprints)[0]}, not "
            f"{config.fingerprint}: pass the scheme options and tokenizer the gateway used"
        )
    return logged


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch(list(texts))]


def _black_box_audit(
    config: SchemeConfig,
    keys: list[Any],
    tokenizer: Any,
    prompts: list[str],
    parameters: dict[str, Any],
    *,
    url: str,
    suspect_model: str,
    reference: str | None,
    base: Path | None,
    our_model: Path | None,
    max_tokens: int,
    api_key: str | None,
    reference_api_key: str | None,
) -> AuditOutcome:
    """Query the suspect (and the reference, as the control) with `prompts`; score the answers.

    Each host gets its own key: `api_key` goes to the suspect only, `reference_api_key` to the
    reference only (the suspect's operator must not learn the reference's key, nor the other
    way round)."""
    from distillguard.forensics.radioactivity import black_box_focused_test, black_box_test

    parameters = parameters | {"queries": len(prompts), "max_tokens": max_tokens}
    prompt_ids = _encode(tokenizer, prompts)
    focus = None
    if base is not None:
        if our_model is None:
            raise InputError("the focused test needs our model's directory")
        focus = (load_suspect_weights(our_model), load_suspect_weights(base))
        parameters |= {"base": str(base), "our_model": str(our_model)}

    def audit_url(address: str, model: str, key: str | None) -> list[Any]:
        outputs = query_suspect(address, model, prompts, max_tokens=max_tokens, api_key=key)
        output_ids = _encode(tokenizer, outputs)
        plain = black_box_test(config, keys, prompt_ids, output_ids)
        if focus is None:
            return [plain]
        ours, base_model = focus
        focused = black_box_focused_test(config, keys, prompt_ids, output_ids, ours, base_model)
        return [focused, plain]

    results = audit_url(url, suspect_model, api_key)
    controls = (
        audit_url(reference, _first_model(reference, reference_api_key), reference_api_key)
        if reference
        else []
    )
    # the outcome is recorded (--json, the report): URLs without their passwords
    return AuditOutcome(
        "black-box",
        f"{suspect_model} at {redact(url)}",
        redact(reference) if reference else None,
        results,
        controls,
        parameters,
    )


def _open_weights_audit(
    config: SchemeConfig,
    keys: list[Any],
    tokenizer: Any,
    logged: LoggedTraffic,
    parameters: dict[str, Any],
    weights: Path,
    *,
    reference: str | None,
    contexts: int,
) -> AuditOutcome:
    """Teacher-force the logged outputs through the suspect (and the reference, the control)."""
    from distillguard.forensics.radioactivity import open_weights_test

    documents = [
        prompt + output
        for prompt, output in zip(
            _encode(tokenizer, logged.prompts), _encode(tokenizer, logged.outputs), strict=True
        )
    ]
    parameters = parameters | {"contexts": contexts, "documents": len(documents)}
    reference_model = load_suspect_weights(Path(reference)) if reference else None
    # with a reference, the suspect's shift away from it leads; the reference audited on its
    # own is the control
    results = open_weights_test(
        load_suspect_weights(weights),
        config,
        keys,
        documents,
        reference=reference_model,
        max_contexts=contexts,
    ).all()
    controls = (
        open_weights_test(reference_model, config, keys, documents, max_contexts=contexts).all()
        if reference_model is not None
        else []
    )
    return AuditOutcome("open-weights", str(weights), reference, results, controls, parameters)


def _first_model(url: str, api_key: str | None = None) -> str:
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=30)
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError, TypeError) as exc:
        raise ConfigError(
            redact(f"cannot list the reference's models at {url}/models: {exc}")
        ) from None
