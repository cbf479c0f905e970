"""Every installed tokenizer round-trips any text exactly and saves as plain JSON."""

from __future__ import annotations

import json

import pytest

from kennethlm_core.builtin.corpora import SAMPLE
from kennethlm_core.builtin.tokenizers import ByteTokenizer, CharTokenizer
from kennethlm_core.config import build_config
from kennethlm_core.errors import CheckpointError, ConfigError
from kennethlm_core.plugins import get_registry

DANISH = [
    "Rødgrød med fløde på én æblekage.\nÆRØ, Ørsted og Århus!",
    "Linje et\r\n\tindrykket\n\n  to mellemrum  ",
    "Hej 😊 👍 ❤️ — \u00a0§ 3, stk. 2: 1½ kr.",
    "",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 uden for BMP og en kombineret a\u0308",
]


ODD = [
    "<|doc|> is text here, not a document token",
    "\x00\x01\x7f control bytes, \u200b zero width, \ufeff BOM, \U0010fffd private use",
    "日本語, العربية, ελληνικά and 🇩🇰 flags",
]
SAMPLE_TEXTS = [json.loads(line)["text"] for line in SAMPLE.read_text("utf-8").splitlines()]
INSTALLED = get_registry().names("tokenizer")  # char and byte, plus bpe, unigram, ... plugins


@pytest.fixture(scope="module", params=INSTALLED)
def installed(request):
    """Each installed tokenizer, with its default vocabulary, trained on the embedded sample."""
    tok = get_registry().get("tokenizer", request.param).factory(build_config())
    tok.train(SAMPLE_TEXTS)
    return tok


@pytest.mark.parametrize("text", DANISH + ODD)
def test_every_installed_tokenizer_round_trips_any_text(installed, text):
    ids = installed.encode(text)
    assert installed.decode(ids) == text
    assert all(0 <= i < installed.vocab_size for i in ids)
    assert installed.doc_id not in ids and 0 <= installed.doc_id < installed.vocab_size


def test_every_installed_tokenizer_saves_loads_and_batches(installed, tmp_path):
    installed.save(tmp_path)
    json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))  # plain JSON
    again = get_registry().get("tokenizer", installed.name).factory(build_config())
    again.load(tmp_path)
    assert again.fingerprint() == installed.fingerprint()
    assert again.vocab_size == installed.vocab_size and again.doc_id == installed.doc_id
    texts = DANISH + ODD
    assert again.encode_batch(texts) == [installed.encode(t) for t in texts]


def trained_char(vocab_size=0):
    tok = CharTokenizer(vocab_size)
    tok.train(["Rødgrød med fløde.\n", "abc æøå ÆØÅ 😊"])
    return tok


@pytest.mark.parametrize("make", [ByteTokenizer, trained_char], ids=["byte", "char"])
@pytest.mark.parametrize("text", DANISH)
def test_round_trip_is_exact(make, text):
    tok = make()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.doc_id not in ids


def test_char_tokenizer_uses_a_token_per_known_character():
    tok = trained_char()
    assert len(tok.encode("æøå😊")) == 4
    assert len(tok.encode("ü")) == 2  # unseen: its two UTF-8 bytes


def test_char_vocab_cap_keeps_the_most_frequent_characters():
    tok = CharTokenizer(vocab_size=257 + 2)
    tok.train(["aaaa bbb c"])
    assert tok.chars == ["a", "b"]  # a: 4, b: 3, space: 2, c: 1
    assert tok.decode(tok.encode("abc")) == "abc"
    with pytest.raises(ConfigError, match="must exceed 257"):
        CharTokenizer(vocab_size=100)


@pytest.mark.parametrize("make", [ByteTokenizer, trained_char], ids=["byte", "char"])
def test_save_and_load_give_the_same_tokenizer(tmp_path, make):
    tok = make()
    tok.save(tmp_path)
    json.loads((tmp_path / "tokenizer.json").read_text())  # plain JSON
    again = type(tok)()
    again.load(tmp_path)
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode(DANISH[0]) == tok.encode(DANISH[0])
    assert again.vocab_size == tok.vocab_size


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"type": "char", "chars": ')
    with pytest.raises(CheckpointError, match="corrupt"):
        CharTokenizer().load(tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        CharTokenizer().load(tmp_path / "nowhere")
