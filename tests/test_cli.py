"""The command line: keys, detection, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from distillguard.cli import main
from distillguard.config import MASTER_SECRET_ENV


@pytest.fixture(autouse=True)
def no_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_SECRET_ENV, raising=False)


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(outcome: tuple[int, str, str], fragment: str) -> None:
    code, _, stderr = outcome
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert fragment in lines[0]
    assert "Traceback" not in stderr


def test_help_explains_each_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("keys", "detect"):
        assert command in result.stdout
    keys_help = CliRunner().invoke(main, ["keys", "--help"]).stdout
    assert "init" in keys_help and "tenant" in keys_help


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


@pytest.fixture
def watermarked_file(tmp_path: Path, word_tokenizer) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """A home with tenants acme and globex, and a text file watermarked for acme."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from distillguard.keys import derive_tenant_key, load_master_secret
    from distillguard.watermark import SchemeConfig, tokenizer_fingerprint
    from distillguard.watermark.processor import TenantWatermarkProcessor

    tokenizer, tokenizer_dir = word_tokenizer
    home = tmp_path / "home"
    run(home, "keys", "init")
    for tenant in ("acme", "globex"):
        assert run(home, "keys", "tenant", tenant, "--tokenizer", str(tokenizer_dir))[0] == 0
    key = derive_tenant_key(load_master_secret(home), "acme").watermark_key()
    vocab = tokenizer.get_vocab_size()
    config = SchemeConfig().bind(vocab, tokenizer_fingerprint(tokenizer))
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, eos_token_id=None)
    ).eval()
    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    output = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        max_new_tokens=80,
        min_new_tokens=80,
        logits_processor=[TenantWatermarkProcessor(config, [key])],
        pad_token_id=0,
    )
    text_file = tmp_path / "suspect.txt"
    text_file.write_text(tokenizer.decode(output[0, 5:].tolist()))
    return home, tokenizer_dir, text_file


def test_detect_finds_and_attributes_the_tenant(watermarked_file: tuple[Path, Path, Path]) -> None:
    home, tokenizer_dir, text_file = watermarked_file
    code, out, _ = run(home, "detect", str(text_file), "--tokenizer", str(tokenizer_dir), "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["attribution"]["tenant"] == "acme"
    assert payload["attribution"]["corrected_p_value"] < 1e-6
    by_tenant = {item["tenant"]: item for item in payload["total"]}
    assert by_tenant["globex"]["p_value"] > 1e-3
    code, out, _ = run(
        home, "detect", str(text_file), "--tokenizer", str(tokenizer_dir), "--tenant", "acme"
    )
    assert code == 0 and "TOTAL" in out and "acme" in out


def test_a_key_recorded_without_a_tokenizer_detects_with_any(
    watermarked_file: tuple[Path, Path, Path],
) -> None:
    home, tokenizer_dir, text_file = watermarked_file
    assert run(home, "keys", "tenant", "initech")[0] == 0  # no --tokenizer: unbound commitment
    tok = ["--tokenizer", str(tokenizer_dir)]
    code, out, _ = run(home, "detect", str(text_file), *tok, "--tenant", "initech", "--json")
    assert code == 0
    assert json.loads(out)["total"][0]["p_value"] > 1e-3
    outcome = run(home, "detect", str(text_file), *tok, "--tenant", "initech", "--gamma", "0.5")
    assert_one_line_error(outcome, "keyed under scheme")


def test_detect_reads_jsonl(watermarked_file: tuple[Path, Path, Path], tmp_path: Path) -> None:
    home, tokenizer_dir, text_file = watermarked_file
    lines = tmp_path / "docs.jsonl"
    text = text_file.read_text()
    lines.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": text}) + "\n")
    code, out, _ = run(
        home, "detect", str(lines), "--tokenizer", str(tokenizer_dir), "--tenant", "acme", "--json"
    )
    payload = json.loads(out)
    assert code == 0 and len(payload["documents"]) == 2
    # duplicated documents add no evidence to the total
    assert (
        payload["total"][0]["scored_tokens"]
        == payload["documents"][0]["detections"][0]["scored_tokens"]
    )


def test_detect_bad_input_gives_one_line_errors(
    watermarked_file: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    home, tokenizer_dir, text_file = watermarked_file
    tok = ["--tokenizer", str(tokenizer_dir)]
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\xff\xfe" * 10)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "w1 w2"}\n{not json\n')
    assert_one_line_error(run(home, "detect", str(empty), *tok), "empty")
    assert_one_line_error(run(home, "detect", str(binary), *tok), "not a text file")
    assert_one_line_error(run(home, "detect", str(latin), *tok), "not UTF-8")
    assert_one_line_error(
        run(home, "detect", str(broken), *tok), "broken.jsonl:2 is not valid JSON"
    )
    assert_one_line_error(run(home, "detect", str(tmp_path / "missing.txt"), *tok), "cannot read")
    assert_one_line_error(
        run(home, "detect", str(text_file), *tok, "--tenant", "nobody"), "unknown tenant"
    )
    assert_one_line_error(
        run(home, "detect", str(text_file), *tok, "--gamma", "0.5"), "keyed under scheme"
    )
    assert_one_line_error(run(home, "detect", str(text_file)), "--tokenizer is required")
    assert_one_line_error(
        run(home, "detect", str(text_file), "--tokenizer", str(tmp_path)), "no tokenizer"
    )
    assert_one_line_error(
        run(home, "detect", str(text_file), *tok, "--tenant", "acme", "--fingerprint", "sha256:00"),
        "does not match",
    )


def test_console_script_errors_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "distillguard", "--home", str(tmp_path), "keys", "tenant", "acme"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no master secret")
    assert "Traceback" not in result.stderr


def test_model_train_and_info(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    output = tmp_path / "model"
    result = CliRunner().invoke(
        main, ["model", "train", "--tiny", "--output", str(output), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "validation perplexity" in result.stdout
    info = CliRunner().invoke(main, ["model", "info", "--model", str(output), "--json"])
    assert json.loads(info.stdout)["parameters"] > 0


def test_model_info_describes_the_embedded_model() -> None:
    from distillguard.engine.model import EMBEDDED_MODEL_DIR

    if not (EMBEDDED_MODEL_DIR / "card.json").is_file():
        pytest.fail("the embedded model is not shipped in the package")
    result = CliRunner().invoke(main, ["model", "info"])
    assert result.exit_code == 0
    assert "validation perplexity" in result.stdout
    assert "sha256:" in result.stdout


def test_generate_prints_a_watermarked_completion_and_detects_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    code, out, _ = run(
        tmp_path,
        "generate",
        "The module",
        "--model",
        str(tiny_model_dir),
        "--max-tokens",
        "80",
        "--seed",
        "3",
        "--detect",
        "--json",
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["tenant"] == "demo"
    assert payload["watermark_key_id"].startswith("wk_")
    assert payload["detection"]["scored_tokens"] > 0
    if payload["detection"]["scored_tokens"] >= 40:
        assert payload["detection"]["p_value"] < 1e-3
    # the demo tenant's key was recorded under the engine's scheme
    code, out, _ = run(tmp_path, "keys", "tenant", "demo", "--json")
    assert code == 0


def test_generate_bad_input_gives_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = ["--model", str(tiny_model_dir)]
    assert_one_line_error(
        run(tmp_path, "generate", "hi", "--model", str(tmp_path)), "not a Hugging Face model"
    )
    assert_one_line_error(
        run(tmp_path, "generate", "hi", *model, "--max-tokens", "0"), "max_tokens"
    )
    assert_one_line_error(
        run(tmp_path, "generate", "hi", *model, "--temperature", "-1"), "temperature"
    )
    assert_one_line_error(run(tmp_path, "generate", "word " * 300, *model), "context")
    run(tmp_path, "keys", "init")
    assert_one_line_error(
        run(tmp_path, "generate", "hi", *model, "--tenant", "nobody"), "unknown tenant"
    )


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


def test_audit_verify_reports_a_broken_chain(tmp_path: Path) -> None:
    from distillguard.store import connect
    from distillguard.store.audit import AuditLog
    from distillguard.store.usage import UsageRecord

    log = AuditLog(lambda: connect(tmp_path))
    for index in range(3):
        log.append(
            UsageRecord(
                f"req_{index}",
                "2026-11-30T00:00:00Z",
                "acme",
                "k",
                "m",
                "completions",
                200,
                "ok",
                1,
                1,
                1.0,
                None,
                None,
            )
        )
    log.close()
    code, out, _ = run(tmp_path, "audit", "verify")
    assert code == 0 and "3 records" in out
    import sqlite3

    with sqlite3.connect(tmp_path / "distillguard.db") as connection:
        connection.execute("UPDATE usage SET prompt_tokens = 99 WHERE request_id = 'req_1'")
    assert_one_line_error(run(tmp_path, "audit", "verify"), "broken at record 2")


def test_accounts_reads_the_gateway_admin_api_and_pins_tiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillguard.monitor.history import TierHistory
    from distillguard.monitor.monitor import Monitor
    from distillguard.store import connect

    from .gateway.conftest import monitored_gateway, run_app
    from .monitor.test_features import event
    from .monitor.test_monitor import eager_model

    token = "cli-admin-token-0123456789"
    history = TierHistory(lambda: connect(tmp_path, shared=True))
    monitor = Monitor(eager_model(), on_tier_change=history.record)
    gateway, audit, _, key_id = monitored_gateway(tmp_path, monitor, token, rpm=60, tpm=100_000)
    for index in range(15):
        monitor.process(event(30.0 * index, f"Think step by step about {index}.", account=key_id))
    server, thread, url = run_app(gateway.app)
    base = url.removesuffix("/v1")
    try:
        monkeypatch.delenv("DISTILLGUARD_ADMIN_TOKEN", raising=False)
        assert_one_line_error(run(tmp_path, "accounts", "--url", base), "DISTILLGUARD_ADMIN_TOKEN")
        monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN", "wrong-token-0123456789")
        assert_one_line_error(run(tmp_path, "accounts", "--url", base), "401")
        monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN", token)
        code, out, _ = run(tmp_path, "accounts", "--url", base)
        assert code == 0 and key_id in out and "throttle" in out
        assert "step-by-step reasoning" in out
        code, out, _ = run(tmp_path, "accounts", "--url", base, "--json")
        rows = json.loads(out)
        assert rows[0]["account"] == key_id and rows[0]["flagged_at"] >= 10
        code, out, _ = run(tmp_path, "accounts", "--url", base, "set-tier", key_id, "normal")
        assert code == 0 and "pinned to normal" in out
        assert monitor.tier_of(key_id) == "normal"
        code, out, _ = run(tmp_path, "accounts", "--url", base, "rings")
        assert code == 0 and out.strip() == "no rings"
        code, out, _ = run(tmp_path, "accounts", "history", "--json")
        tiers = [change["tier"] for change in json.loads(out)]
        assert tiers == ["throttle", "normal"]  # straight to throttle at 10 requests
        assert_one_line_error(
            run(tmp_path, "accounts", "--url", "http://127.0.0.1:9"), "cannot reach the gateway"
        )
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join()
        audit.close()


def test_audit_suspect_and_report_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "audit", "suspect"), "either --url")
    assert_one_line_error(
        run(tmp_path, "audit", "suspect", "--url", "http://127.0.0.1:9/v1"), "--suspect-model"
    )
    assert_one_line_error(
        run(tmp_path, "audit", "suspect", "--weights", str(tmp_path), "--queries", "0"),
        "must be positive",
    )
    missing = tmp_path / "missing.json"
    assert_one_line_error(run(tmp_path, "report", str(missing)), "cannot read")
    assert_one_line_error(run(tmp_path, "demo", "--queries", "5"), "at least 100")


def test_replica_options_give_one_line_errors(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "serve", "--workers", "2"), "needs --redis")
    assert_one_line_error(
        run(tmp_path, "serve", "--redis", "redis://127.0.0.1:1/0"), "cannot reach Redis"
    )
    assert_one_line_error(
        run(tmp_path, "--database", "mysql://localhost/db", "keys", "list"), "postgresql://"
    )


def test_keys_and_audit_commands_work_on_postgresql(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    code, out, _ = run(
        tmp_path,
        "--database",
        fresh_postgres_url,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--rpm",
        "60",
        "--tpm",
        "1000",
    )
    assert code == 0 and "dg-" in out
    code, out, _ = run(tmp_path, "--database", fresh_postgres_url, "keys", "list")
    assert code == 0 and "acme" in out
    assert not (tmp_path / "distillguard.db").exists()  # nothing went to SQLite
    code, out, _ = run(tmp_path, "--database", fresh_postgres_url, "audit", "verify")
    assert code == 0 and "intact: 0 records" in out
