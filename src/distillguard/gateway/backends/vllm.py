"""The vLLM backend: an upstream vLLM server that marks each tenant's outputs itself.

vLLM runs `distillguard.integrations.vllm:TenantWatermark` (docs/vllm.md). For every request
this backend adds, in `vllm_xargs`, the tenant's name with a tag signed by a key derived from
the master secret (`keys.tags`); the processor checks the tag and derives the tenant's key
from the same master secret. Keys never travel. The usage row records the tenant key's id and
the scheme fingerprint, bound to the served tokenizer and the logits' width, so `detect`,
`audit suspect` and the report work on text vLLM served. Prompt tokens are counted with the
served tokenizer (its chat template for chat requests), not estimated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from distillguard.errors import ApiError
from distillguard.gateway.backends.client import estimate_tokens
from distillguard.gateway.backends.upstream import UpstreamBackend, UpstreamClient, UpstreamJob
from distillguard.gateway.metering import Call
from distillguard.gateway.policy import Tier
from distillguard.gateway.protocol import ParsedRequest
from distillguard.keys.secret import MasterSecret
from distillguard.keys.tags import sign_reference
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["VllmBackend"]


class VllmBackend(UpstreamBackend):
    """`models` from a vLLM server at `client`, watermarked per tenant by its processor.

    `scheme` is bound to the served tokenizer and logits width; `tokenizer` is the served
    model's (a `transformers` tokenizer, for exact prompt counts and the chat template);
    `watermark_key_for(tenant)` gives the key the processor will derive, recording its
    commitment on first use.
    """

    def __init__(
        self,
        client: UpstreamClient,
        models: tuple[str, ...],
        *,
        master: MasterSecret,
        scheme: SchemeConfig,
        tokenizer: Any,
        watermark_key_for: Callable[[str], WatermarkKey | None],
        max_tokens: int = 4096,
    ) -> None:
        super().__init__(client, models, max_tokens=max_tokens)
        self.master = master
        self.scheme = scheme
        self.tokenizer = tokenizer
        self.watermark_key_for = watermark_key_for

    def begin(self, call: Call) -> None:
        pass  # the watermark header is known once the tenant is

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt as the served model's chat template renders it (what vLLM counts)."""
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception:  # a template that refuses these messages: vLLM will say why
            return json.dumps(messages, ensure_ascii=False)
        return str(rendered)

    def prepare(
        self, call: Call, body: dict[str, Any], parsed: ParsedRequest, tier: Tier, keep_text: bool
    ) -> tuple[UpstreamJob, int]:
        if call.key is None:
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
        job, _ = super().prepare(call, body, parsed, tier, keep_text)
        call.prompt_tokens = self._count(parsed.prompt)
        parsed = call.parsed or parsed
        reserved = (
            call.prompt_tokens + (call.max_tokens or self.max_tokens) * parsed.generated_choices
        )
        key = self.watermark_key_for(call.key.tenant)
        if key is None:
            call.watermark_header = "none"
            return job, reserved
        reference = sign_reference(self.master, call.key.tenant, call.request_id)
        call.watermark_key_id = key.key_id
        call.watermark_header = key.key_id
        call.fingerprint = self.scheme.fingerprint
        return UpstreamJob(job.path, job.body | {"vllm_xargs": reference.to_xargs()}), reserved

    def _count(self, prompt: str | list[int]) -> int:
        if isinstance(prompt, list):
            return len(prompt)
        try:
            return len(self.tokenizer.encode(prompt, add_special_tokens=False))
        except Exception:  # a tokenizer that cannot encode this text: fall back to the estimate
            return estimate_tokens(prompt)
