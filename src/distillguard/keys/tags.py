"""Tenant references: which tenant's watermark a serving engine should apply, and proof that
the gateway asked for it.

The gateway never sends a key. It sends the tenant's name with a tag, an HMAC-SHA256 over
(tenant, key version, request id, expiry) keyed by a key derived from the master secret; the
engine's processor, which holds the same master secret, checks the tag and derives the tenant's
key itself. A client that reaches the engine directly can forge neither a tag (it lacks the
secret) nor a fresh one from an old tag (the expiry is inside the MAC).
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from distillguard.errors import AuthenticationError, InputError
from distillguard.keys.derive import hkdf_sha256
from distillguard.keys.secret import MasterSecret

__all__ = ["TAG_TTL_SECONDS", "XARGS", "TenantReference", "sign_reference", "verify_reference"]

TAG_TTL_SECONDS = 600  # a request that waits longer in an engine's queue is refused
_SALT = b"distillguard/tenant-reference-tag/v1"
# the names under which a reference travels in vLLM's `vllm_xargs` (SamplingParams.extra_args)
XARGS = {
    "tenant": "dg_tenant",
    "key_version": "dg_key_version",
    "request_id": "dg_request",
    "expires": "dg_expires",
    "tag": "dg_tag",
}


@dataclass(frozen=True)
class TenantReference:
    """A tenant named for one request, until `expires` (Unix seconds), with its tag."""

    tenant: str
    key_version: int
    request_id: str
    expires: int
    tag: str

    def to_xargs(self) -> dict[str, str | int]:
        return {
            XARGS["tenant"]: self.tenant,
            XARGS["key_version"]: self.key_version,
            XARGS["request_id"]: self.request_id,
            XARGS["expires"]: self.expires,
            XARGS["tag"]: self.tag,
        }

    @classmethod
    def from_xargs(cls, extra: Mapping[str, Any] | None) -> TenantReference | None:
        """The reference in a request's extra arguments; None when it names no tenant."""
        if not extra or XARGS["tenant"] not in extra:
            return None
        tenant = extra.get(XARGS["tenant"])
        request_id = extra.get(XARGS["request_id"])
        tag = extra.get(XARGS["tag"])
        try:
            version = int(extra.get(XARGS["key_version"], 1))
            expires = int(extra.get(XARGS["expires"], 0))
        except (TypeError, ValueError):
            raise InputError("the tenant reference's version and expiry must be integers") from None
        if not isinstance(tenant, str) or not tenant or "\0" in tenant:
            raise InputError("the tenant reference names no valid tenant")
        if not isinstance(request_id, str) or not isinstance(tag, str):
            raise InputError("the tenant reference needs a request id and a tag")
        return cls(tenant, version, request_id, expires, tag)


def _tag_key(master: MasterSecret) -> bytes:
    return _derive_tag_key(master.material)


@functools.lru_cache(maxsize=4)
def _derive_tag_key(material: bytes) -> bytes:
    """Derived once per master secret: signing and checking run once per request."""
    return hkdf_sha256(material, _SALT, b"tag-key", 32)


def _message(tenant: str, key_version: int, request_id: str, expires: int) -> bytes:
    fields = ("dg-tag-v1", tenant, str(key_version), request_id, str(expires))
    return "\0".join(fields).encode()


def sign_reference(
    master: MasterSecret,
    tenant: str,
    request_id: str,
    *,
    key_version: int = 1,
    ttl: float = TAG_TTL_SECONDS,
    now: float | None = None,
) -> TenantReference:
    """A reference to `tenant` for one request, valid for `ttl` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    message = _message(tenant, key_version, request_id, expires)
    tag = hmac.new(_tag_key(master), message, sha256).hexdigest()
    return TenantReference(tenant, key_version, request_id, expires, tag)


def verify_reference(
    master: MasterSecret,
    reference: TenantReference,
    *,
    now: float | None = None,
    check_expiry: bool = True,
) -> None:
    """Raise AuthenticationError unless the gateway signed `reference` and it has not expired.

    The tag is compared in constant time; the message says which check failed, never the tag.
    """
    message = _message(
        reference.tenant, reference.key_version, reference.request_id, reference.expires
    )
    expected = hmac.new(_tag_key(master), message, sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), reference.tag.encode()):
        raise AuthenticationError("the tenant reference's tag does not verify")
    if check_expiry and reference.expires < (time.time() if now is None else now):
        raise AuthenticationError("the tenant reference has expired")
