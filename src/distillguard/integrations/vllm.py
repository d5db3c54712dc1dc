"""The tenant watermark inside vLLM (v1 engine): a logits processor, `TenantWatermark`.

    vllm serve MODEL --logits-processors distillguard.integrations.vllm:TenantWatermark

(or the `vllm.logits_processors` entry point this package declares). Each request names its
tenant in `vllm_xargs` with a tag the gateway signed (`distillguard.keys.tags`); the processor
checks the tag and derives the tenant's key from the master secret it shares with the gateway
(`DISTILLGUARD_MASTER_SECRET`, or the secret file in `DISTILLGUARD_HOME`). Keys never travel.

Modes (`DISTILLGUARD_VLLM_MODE`):
- `enforce` (default): a request without a valid reference is refused in `validate_params`
  (HTTP 400), so a client that reaches vLLM directly gets neither unmarked text nor another
  tenant's watermark;
- `optional`: for trusted networks, a request without a reference is served unmarked (its
  logits untouched, bit for bit); a forged or expired reference is still refused.

The scheme is the one `distillguard serve` uses (the engine's default green list); the
gateway binds its fingerprint to the served tokenizer and the logits' width.
`DISTILLGUARD_VLLM_LAYERING` (`tenant`, the default; `split`; `stacked`) adds the provider-wide
layer (`watermark.scheme.layered_scheme`), keyed with the provider key derived from the same
master secret (`keys.derive.derive_provider_key`); the gateway must bind the same scheme.
Speculative decoding is refused at start: its V1 runner skips custom processors, and output
would leave unmarked.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, ClassVar

from distillguard.errors import require

require("vllm", "vllm")

import importlib  # noqa: E402
import weakref  # noqa: E402

import torch  # noqa: E402

from distillguard.errors import ConfigError, DistillGuardError  # noqa: E402
from distillguard.integrations.batch import BatchRow, BatchWatermark  # noqa: E402
from distillguard.keys.derive import derive_provider_key, derive_tenant_key  # noqa: E402
from distillguard.keys.secret import MasterSecret, load_master_secret  # noqa: E402
from distillguard.keys.tags import TenantReference, verify_reference  # noqa: E402
from distillguard.watermark.key import WatermarkKey  # noqa: E402
from distillguard.watermark.scheme import SchemeConfig, layered_scheme  # noqa: E402

# vLLM ships no type information, and `benchmarks/vllm.py` would shadow its name for the type
# checker: its classes are taken by name at run time.
_interface: Any = importlib.import_module("vllm.v1.sample.logits_processor")
_builtin: Any = importlib.import_module("vllm.v1.sample.logits_processor.builtin")
LogitsProcessor: Any = _interface.LogitsProcessor
BatchUpdate = Any  # vllm.v1.sample.logits_processor.BatchUpdate
SamplingParams = Any  # vllm.SamplingParams
VllmConfig = Any  # vllm.config.VllmConfig
process_dict_updates: Any = _builtin.process_dict_updates

__all__ = ["LAYERING_ENV", "MODE_ENV", "TenantWatermark", "served_scheme"]

log = logging.getLogger("distillguard.vllm")

MODE_ENV = "DISTILLGUARD_VLLM_MODE"
LAYERING_ENV = "DISTILLGUARD_VLLM_LAYERING"
_MODES = ("enforce", "optional")
_KEY_CACHE = 4096


def _mode() -> str:
    mode = os.environ.get(MODE_ENV, "enforce")
    if mode not in _MODES:
        raise ConfigError(f"{MODE_ENV} must be one of {', '.join(_MODES)}, not {mode!r}")
    return mode


def served_scheme() -> SchemeConfig:
    """The scheme this process marks with: `layered_scheme` of `DISTILLGUARD_VLLM_LAYERING`."""
    try:
        return layered_scheme(os.environ.get(LAYERING_ENV, "tenant"))
    except DistillGuardError as exc:
        raise ConfigError(f"{LAYERING_ENV}: {exc}") from None


class _Secrets:
    """The master secret and the tenant keys derived from it, loaded once per process."""

    master: ClassVar[MasterSecret | None] = None
    keys: ClassVar[OrderedDict[tuple[str, int], WatermarkKey]] = OrderedDict()

    @classmethod
    def load(cls) -> MasterSecret:
        if cls.master is None:
            cls.master = load_master_secret()
        return cls.master

    @classmethod
    def key(cls, tenant: str, version: int) -> WatermarkKey:
        cached = cls.keys.get((tenant, version))
        if cached is not None:
            cls.keys.move_to_end((tenant, version))
            return cached
        key = derive_tenant_key(cls.load(), tenant, version).watermark_key()
        cls.keys[(tenant, version)] = key
        if len(cls.keys) > _KEY_CACHE:
            cls.keys.popitem(last=False)
        return key


def _reference(params: SamplingParams) -> TenantReference | None:
    return TenantReference.from_xargs(params.extra_args)


class TenantWatermark(LogitsProcessor):  # type: ignore[misc]
    """vLLM v1 logits processor: each row marked with its own tenant's key."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse (HTTP 400) a missing (enforce mode), forged or expired tenant reference."""
        try:
            reference = _reference(sampling_params)
            if reference is None:
                if _mode() == "enforce":
                    raise ValueError(
                        "this server watermarks every request: send it through the gateway"
                    )
                return
            verify_reference(_Secrets.load(), reference)
        except DistillGuardError as exc:
            raise ValueError(f"distillguard: {exc}") from None

    # The active processor of each engine (by its config): installed, the package's entry
    # point loads this class, and `--logits-processors` names it again; the second copy stays
    # idle instead of adding the watermark twice.
    _engines: ClassVar[weakref.WeakValueDictionary[int, TenantWatermark]] = (
        weakref.WeakValueDictionary()
    )

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ConfigError(
                "distillguard's tenant watermark cannot run with speculative decoding: "
                "vLLM's V1 runner skips custom logits processors there"
            )
        _mode()  # a wrong mode fails at start, not at the first request
        _Secrets.load()
        self._config = vllm_config  # held, so that its id is not reused while this lives
        self.watermark: BatchWatermark | None = None
        if id(vllm_config) in TenantWatermark._engines:
            log.info("distillguard tenant watermark loaded twice; the second copy stays idle")
            return
        TenantWatermark._engines[id(vllm_config)] = self
        scheme = served_scheme()
        provider = (
            derive_provider_key(_Secrets.load()).watermark_key()
            if scheme.has_provider_layer
            else None
        )
        self.watermark = BatchWatermark(scheme, provider)
        log.info("distillguard tenant watermark on (%s)", self.watermark.config.fingerprint)

    def is_argmax_invariant(self) -> bool:
        return False  # the green list moves the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.watermark is not None:
            process_dict_updates(self.watermark.rows, batch_update, self._new_row)

    def _new_row(
        self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
    ) -> BatchRow | None:
        reference = _reference(params)
        if reference is None:
            return None  # optional mode: the row stays untouched
        # validate_params checked the tag and its expiry where the request came in; the tag
        # is checked again here (not the expiry: the request may have queued since)
        verify_reference(_Secrets.load(), reference, check_expiry=False)
        key = _Secrets.key(reference.tenant, reference.key_version)
        return BatchRow(key, list(prompt_ids or ()), output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.watermark is None:
            return logits
        return self.watermark.apply(logits)
