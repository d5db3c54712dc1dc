"""`distillguard keys`: the master secret, tenant keys (never printed) and API keys."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import assert_one_line_error, run


def test_keys_init_then_tenant_prints_id_and_commitment_never_the_key(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, "keys", "init")
    assert code == 0 and "created" in out
    code, out, _ = run(tmp_path, "keys", "init")
    assert code == 0 and "already present" in out
    code, out, _ = run(tmp_path, "keys", "tenant", "acme", "--json")
    assert code == 0
    fields = json.loads(out)
    assert fields["key_id"].startswith("wk_")
    assert fields["commitment"].startswith("sha256:")
    from distillguard.keys import derive_tenant_key, load_master_secret

    material = derive_tenant_key(load_master_secret(tmp_path), "acme").material
    assert material.hex() not in out
    # the commitment is recorded once and shown unchanged afterwards
    assert json.loads(run(tmp_path, "keys", "tenant", "acme", "--json")[1]) == fields


def test_tenant_without_a_secret_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "keys", "tenant", "acme"), "keys init")


def test_api_keys_create_list_revoke(tmp_path: Path) -> None:
    code, out, _ = run(
        tmp_path, "keys", "create", "--tenant", "acme", "--rpm", "10", "--tpm", "1000"
    )
    assert code == 0
    api_key = next(line.split()[-1] for line in out.splitlines() if line.startswith("api key"))
    key_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("key id"))
    code, out, _ = run(tmp_path, "keys", "list", "--json")
    listed = json.loads(out)
    assert [item["key_id"] for item in listed] == [key_id]
    assert api_key not in out and api_key.split("-")[-1] not in out
    assert run(tmp_path, "keys", "revoke", key_id)[0] == 0
    assert json.loads(run(tmp_path, "keys", "list", "--json")[1])[0]["revoked_at"]
    assert_one_line_error(run(tmp_path, "keys", "revoke", key_id), "no active API key")


def test_creating_a_key_with_an_unknown_tier_is_a_one_line_error(tmp_path: Path) -> None:
    create = ["keys", "create", "--tenant", "acme", "--rpm", "10", "--tpm", "1000"]
    assert_one_line_error(run(tmp_path, *create, "--tier", "gold"), "unknown tier 'gold'")
    assert json.loads(run(tmp_path, "keys", "list", "--json")[1]) == []
    assert run(tmp_path, *create, "--tier", "throttle")[0] == 0


def test_keys_create_stores_the_org_as_a_token_and_the_program_in_clear(tmp_path: Path) -> None:
    assert run(tmp_path, "keys", "init")[0] == 0
    create = ["keys", "create", "--tenant", "acme", "--rpm", "10", "--tpm", "1000"]
    code, _, _ = run(
        tmp_path, *create, "--org", "Acme Research", "--meta", "signup_program=education"
    )
    assert code == 0
    code, out, _ = run(tmp_path, "keys", "list", "--json")
    (listed,) = json.loads(out)
    from distillguard.gateway.apikeys import org_token
    from distillguard.keys import load_master_secret

    assert listed["org_token"] == org_token(load_master_secret(tmp_path), "acme research")
    assert listed["signup_program"] == "education"
    assert "Acme" not in out
    database = (tmp_path / "distillguard.db").read_bytes()
    assert b"Acme Research" not in database and b"acme research" not in database


def test_bad_account_metadata_is_a_one_line_error(tmp_path: Path) -> None:
    assert run(tmp_path, "keys", "init")[0] == 0
    create = ["keys", "create", "--tenant", "acme", "--rpm", "10", "--tpm", "1000"]
    assert_one_line_error(run(tmp_path, *create, "--meta", "education"), "expected NAME=VALUE")
    assert_one_line_error(run(tmp_path, *create, "--meta", "email=a@b.c"), "unknown key")
    assert_one_line_error(run(tmp_path, *create, "--org", " "), "empty --org")
    assert json.loads(run(tmp_path, "keys", "list", "--json")[1]) == []


def test_an_org_without_a_master_secret_is_a_one_line_error(tmp_path: Path) -> None:
    create = ["keys", "create", "--tenant", "acme", "--rpm", "10", "--tpm", "1000"]
    assert_one_line_error(run(tmp_path, *create, "--org", "Acme"), "keys init")
