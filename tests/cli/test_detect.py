"""`distillguard detect`: detection, attribution, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import assert_one_line_error, run


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


def test_a_line_separator_inside_a_jsonl_string_keeps_the_document_whole(
    watermarked_file: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    # str.splitlines() split at the raw U+2028: two broken halves, neither of them JSON
    home, tokenizer_dir, text_file = watermarked_file
    text = text_file.read_text()
    lines = tmp_path / "docs.jsonl"
    record = {"text": text + "\u2028" + text}
    lines.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    code, out, _ = run(
        home, "detect", str(lines), "--tokenizer", str(tokenizer_dir), "--tenant", "acme", "--json"
    )
    assert code == 0
    assert len(json.loads(out)["documents"]) == 1


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
