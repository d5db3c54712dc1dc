"""Tenant references: only the holder of the master secret can name a tenant, and not forever."""

from __future__ import annotations

import secrets
from dataclasses import replace

import pytest

from distillguard.errors import AuthenticationError, InputError
from distillguard.keys.secret import MasterSecret
from distillguard.keys.tags import TenantReference, sign_reference, verify_reference


def master() -> MasterSecret:
    return MasterSecret(secrets.token_bytes(32), "test")


def test_a_signed_reference_verifies_and_travels_as_xargs() -> None:
    secret = master()
    reference = sign_reference(secret, "acme", "req_1", now=1000.0, ttl=60)
    verify_reference(secret, reference, now=1059.0)
    assert TenantReference.from_xargs(reference.to_xargs()) == reference


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "globex"},
        {"key_version": 2},
        {"request_id": "req_2"},
        {"expires": 10**10},
        {"tag": "0" * 64},
    ],
)
def test_any_change_to_a_reference_breaks_its_tag(change: dict[str, object]) -> None:
    secret = master()
    reference = sign_reference(secret, "acme", "req_1", now=1000.0)
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_reference(secret, replace(reference, **change), now=1000.0)  # type: ignore[arg-type]


def test_another_master_secret_cannot_sign_for_ours() -> None:
    reference = sign_reference(master(), "acme", "req_1")
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify_reference(master(), reference)


def test_an_expired_reference_is_refused_unless_only_the_tag_is_checked() -> None:
    secret = master()
    reference = sign_reference(secret, "acme", "req_1", now=1000.0, ttl=60)
    with pytest.raises(AuthenticationError, match="expired"):
        verify_reference(secret, reference, now=1061.0)
    verify_reference(secret, reference, now=1061.0, check_expiry=False)


def test_requests_without_a_tenant_carry_no_reference_and_bad_ones_are_named() -> None:
    assert TenantReference.from_xargs(None) is None
    assert TenantReference.from_xargs({"other": 1}) is None
    with pytest.raises(InputError, match="request id and a tag"):
        TenantReference.from_xargs({"dg_tenant": "acme"})
    with pytest.raises(InputError, match="integers"):
        TenantReference.from_xargs(
            {"dg_tenant": "acme", "dg_request": "r", "dg_tag": "t", "dg_expires": "soon"}
        )


def test_the_tag_never_appears_in_errors() -> None:
    secret = master()
    reference = sign_reference(secret, "acme", "req_1", now=1000.0, ttl=1)
    for bad in (replace(reference, tenant="x"), reference):
        with pytest.raises(AuthenticationError) as caught:
            verify_reference(secret, bad, now=2000.0)
        assert reference.tag not in str(caught.value)
