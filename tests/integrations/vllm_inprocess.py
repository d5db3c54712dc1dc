"""Run by the vLLM venv's python (tests/integrations/test_vllm.py): vLLM in-process on the
embedded model, with or without the tenant watermark processor; prints one JSON object.

    python vllm_inprocess.py MODE      # MODE: optional | enforce | none (no processor)

The master secret comes from DISTILLGUARD_MASTER_SECRET, which the caller sets.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def without_installed_plugins() -> None:
    """Load only the processors named here: installed, the package's entry point would load
    the tenant watermark into every engine, and the baseline must run without it."""
    import importlib

    loader: Any = importlib.import_module("vllm.v1.sample.logits_processor")
    loader._load_logitsprocs_plugins = lambda: []


PROMPTS = [
    "The module",
    "Return the value",
    "This function",
    "The default is",
    "Each object",
    "A new list",
]
KEYED = {0: "acme", 2: "globex", 4: "acme"}  # rows 1, 3, 5 share the batch unkeyed


def checks_without_an_engine() -> dict[str, Any]:
    """validate_params and start-up refusals, which need no model."""
    from distillguard.errors import ConfigError
    from distillguard.integrations.vllm import TenantWatermark
    from distillguard.keys.secret import load_master_secret
    from distillguard.keys.tags import sign_reference
    from vllm import SamplingParams

    master = load_master_secret()
    good = sign_reference(master, "acme", "req_ok")
    forged = sign_reference(master, "acme", "req_ok").to_xargs() | {"dg_tenant": "globex"}
    expired = sign_reference(master, "acme", "req_old", ttl=-5).to_xargs()
    outcomes: dict[str, str] = {}
    for name, xargs in (
        ("good", good.to_xargs()),
        ("missing", None),
        ("forged", forged),
        ("expired", expired),
    ):
        try:
            TenantWatermark.validate_params(SamplingParams(extra_args=xargs))
            outcomes[name] = "accepted"
        except ValueError as exc:
            outcomes[name] = f"refused: {exc}"

    class Speculative:
        speculative_config = object()

    try:
        TenantWatermark(Speculative(), None, False)  # type: ignore[arg-type]
        outcomes["speculative"] = "started"
    except ConfigError as exc:
        outcomes["speculative"] = f"refused: {exc}"

    class Plain:
        speculative_config = None

    engine = Plain()  # the entry point and --logits-processors both load the class
    first = TenantWatermark(engine, None, False)  # type: ignore[arg-type]
    second = TenantWatermark(engine, None, False)  # type: ignore[arg-type]
    other = TenantWatermark(Plain(), None, False)  # type: ignore[arg-type]
    active = [p.watermark is not None for p in (first, second, other)]
    outcomes["loaded_twice"] = "active: " + ",".join(str(flag) for flag in active)
    return outcomes


def generate(mode: str) -> dict[str, Any]:
    import distillguard.engine
    from distillguard.keys.secret import load_master_secret
    from distillguard.keys.tags import sign_reference
    from vllm import LLM, SamplingParams

    model = os.path.join(os.path.dirname(distillguard.engine.__file__), "default_model")
    processors: list[Any] = []
    if mode != "none":
        from distillguard.integrations.vllm import TenantWatermark

        processors = [TenantWatermark]
    without_installed_plugins()
    llm = LLM(
        model=model,
        logits_processors=processors,
        max_model_len=256,
        seed=0,
        enforce_eager=True,
        enable_prefix_caching=True,
    )
    master = load_master_secret()
    params = []
    for index in range(len(PROMPTS)):
        tenant = KEYED.get(index)
        xargs = sign_reference(master, tenant, f"req_{index}").to_xargs() if tenant else None
        params.append(
            SamplingParams(
                max_tokens=120,
                temperature=1.0,
                seed=100 + index,
                ignore_eos=True,
                extra_args=xargs if mode != "none" else None,
            )
        )
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    return {
        "rows": [
            {
                "prompt_ids": list(output.prompt_token_ids or []),
                "tokens": list(output.outputs[0].token_ids),
                "tenant": KEYED.get(index),
            }
            for index, output in enumerate(outputs)
        ]
    }


def main() -> None:
    mode = sys.argv[1]
    os.environ["DISTILLGUARD_VLLM_MODE"] = "enforce" if mode == "enforce" else "optional"
    result: dict[str, Any] = {"mode": mode}
    if mode == "enforce":
        result["checks"] = checks_without_an_engine()
    else:
        result |= generate(mode)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
