"""Byte-level BPE: exact vocabulary size, learned merges, repeatable training, safe loading."""

import json
from importlib.resources import files

import pytest
from klm_tokenizer_bpe import BPETokenizer
from tokenizers import pre_tokenizers

from kennethlm_core.errors import ConfigError
from kennethlm_core.testing import conformance

SAMPLE = files("kennethlm_core") / "sample" / "danish_sample.jsonl"
TEXT = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]

TestBpeConformance = conformance("tokenizer", "bpe", vocab_size=400)


def trained(vocab_size=300):
    tok = BPETokenizer(vocab_size)
    tok.train(TEXT)
    return tok


def test_vocabulary_has_every_byte_the_document_token_and_the_asked_size():
    tok = trained(300)
    vocab = tok.lib.get_vocab()
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)  # never an unknown token
    assert tok.vocab_size == 300 and tok.doc_id == vocab["<|doc|>"]


def test_frequent_words_become_single_tokens_and_rare_text_falls_back_to_bytes():
    tok = trained(300)
    assert len(tok.encode(" og")) == 1
    assert len(tok.encode(" kommunen")) > len(trained(1000).encode(" kommunen")) > 1
    assert [len(tok.lib.id_to_token(i)) for i in tok.encode("ŋ")] == [1, 1]  # unseen: 2 bytes
    assert tok.decode(tok.encode("ŋ <|doc|> ŋ")) == "ŋ <|doc|> ŋ"
    assert tok.doc_id not in tok.encode("<|doc|>")


def test_training_is_repeatable_and_the_default_size_is_4096():
    assert trained().to_json() == trained().to_json()
    assert BPETokenizer(0).target_size == 4096
    with pytest.raises(ConfigError, match="must exceed 257"):
        BPETokenizer(200)


def test_only_a_bpe_state_loads():
    tok, other = trained(), BPETokenizer()
    other.restore(tok.to_json())
    assert other.encode(TEXT[0]) == tok.encode(TEXT[0])
    state = json.loads(tok.to_json())
    state["model"]["type"] = "Unigram"
    with pytest.raises(ValueError, match="not a bpe tokenizer"):
        BPETokenizer().restore(json.dumps(state))
