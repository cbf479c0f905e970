"""Unigram LM: every byte in the vocabulary, exact round trips, repeatable training."""

import json
from importlib.resources import files

import pytest
from klm_tokenizer_unigram import UnigramTokenizer, canonical
from tokenizers import pre_tokenizers

from kennethlm_core.testing import conformance

SAMPLE = files("kennethlm_core") / "sample" / "danish_sample.jsonl"
TEXT = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
ODD = ["𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f a\u0308 日本語", "  \r\n\t  ", "<|doc|>", "ŋ" * 5]

TestUnigramConformance = conformance("tokenizer", "unigram", vocab_size=400)


def trained(vocab_size=300):
    tok = UnigramTokenizer(vocab_size)
    tok.train(TEXT)
    return tok


@pytest.fixture(scope="module")
def tok():
    return trained()


def test_every_byte_is_a_piece_so_any_text_round_trips(tok):
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(tok.lib.get_vocab())
    for text in ODD:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and tok.doc_id not in ids
    assert tok.vocab_size == 300 and tok.doc_id == 0


def test_training_is_repeatable():
    # the library orders some pieces by hash; canonical() makes the result the same every time
    assert len({trained().to_json() for _ in range(3)}) == 1


def test_canonical_sorts_by_score_then_text_and_reorders_only_the_added_characters():
    vocab = [["<|doc|>", 0.0], ["og", -2.0], ["x", -9.0002], ["b", -9.0], ["a", -9.0001]]
    assert canonical(vocab) == [
        ("<|doc|>", 0.0),
        ("og", -2.0),
        ("a", -9.0),  # the added characters a, b, x take the added scores in their order
        ("b", -9.0001),
        ("x", -9.0002),
    ]


def test_only_a_unigram_state_loads(tok):
    other = UnigramTokenizer()
    other.restore(tok.to_json())
    assert other.encode(TEXT[1]) == tok.encode(TEXT[1])
    state = json.loads(tok.to_json())
    state["added_tokens"] = []
    with pytest.raises(ValueError, match="not a unigram tokenizer"):
        UnigramTokenizer().restore(json.dumps(state))
