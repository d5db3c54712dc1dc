"""One completion from a fresh engine, watermarked with a tenant's key: `distillguard generate`.

The key must be one a report could later vouch for, so the tenant's commitment is recorded
under the engine's scheme (bound to the model's tokenizer) before the text is returned. The
"demo" tenant, the default, is set up on first use: the master secret and its commitment are
created when missing.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.engine.engine import Engine
from distillguard.engine.params import FinishReason, GenerationRequest, SamplingParams
from distillguard.keys import (
    Keyring,
    derive_tenant_key,
    init_master_secret,
    load_master_secret,
    record_commitment,
)
from distillguard.store import connect
from distillguard.store.base import Connection
from distillguard.watermark.detector import Detection, Detector
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["DEMO_TENANT", "OneShotCompletion", "generate_once"]

DEMO_TENANT = "demo"


@dataclass(frozen=True)
class OneShotCompletion:
    """The first choice of one completion, whose key it carries, and optionally its detection."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    tenant: str | None  # None when the completion is not watermarked
    watermark_key_id: str | None
    fingerprint: str | None  # the engine's scheme, when watermarked
    detection: Detection | None  # when asked for and watermarked

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; "detection" only when there is one."""
        payload: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tenant": self.tenant,
            "watermark_key_id": self.watermark_key_id,
            "fingerprint": self.fingerprint,
        }
        if self.detection is not None:
            payload["detection"] = self.detection.to_dict()
        return payload


def generate_once(
    home: Path,
    prompt: str,
    params: SamplingParams,
    scheme: SchemeConfig,
    *,
    model: Path | None = None,
    tenant: str | None = None,
    watermark: bool = True,
    detect: bool = False,
    database: str | None = None,
) -> OneShotCompletion:
    """Complete `prompt` with the model at `model` (the embedded one when None).

    With `watermark`, the completion carries `tenant`'s key (the demo tenant's when None,
    set up on first use); a tenant whose key was never recorded raises KeyNotFoundError.
    With `detect`, the completion is also tested for that key, the prompt's tuples left out.
    """
    with closing(connect(home, url=database)) as connection, Engine(model, scheme=scheme) as engine:
        key = None
        if watermark:
            tenant, key = _watermark_key(home, connection, tenant, engine.scheme)
        prepared = engine.prepare(GenerationRequest(prompt, params, watermark_key=key))
        completion = engine.generate_sync(prepared)
        choice = completion.choices[0]
        detection = None
        if detect and key is not None:
            document = [*prepared.prompt_ids, *choice.token_ids]
            report = Detector(engine.scheme).detect(
                [document], [key], prompt_lengths=[prepared.prompt_tokens]
            )
            detection = report.total[0]
    return OneShotCompletion(
        text=choice.text,
        finish_reason=choice.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        tenant=tenant if key is not None else None,
        watermark_key_id=completion.watermark_key_id,
        fingerprint=completion.fingerprint,
        detection=detection,
    )


def _watermark_key(
    home: Path, connection: Connection, tenant: str | None, scheme: SchemeConfig
) -> tuple[str, WatermarkKey]:
    """The tenant and its key, its commitment under `scheme` recorded. `tenant` None is the
    demo tenant, set up on first use; any other tenant must have been recorded before."""
    if tenant is None:
        tenant = DEMO_TENANT
        master, _ = init_master_secret(home)
        # the keyring only knows tenants whose commitment is recorded
        record_commitment(connection, derive_tenant_key(master, tenant), scheme)
    else:
        master = load_master_secret(home)
    key = Keyring(master, connection)(tenant)
    record_commitment(connection, derive_tenant_key(master, tenant), scheme)
    return tenant, key
