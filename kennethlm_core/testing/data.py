"""The kits for the data slots: tokenizer (trained on the embedded Danish sample, then round
trips of ``DANISH``) and corpus."""

from __future__ import annotations

import itertools
import json

from kennethlm_core.components import Document, Tokenizer
from kennethlm_core.testing.base import Conformance

# Original text for the tokenizer round trip: Danish letters, whitespace of every kind, emoji
# (with joiners and flags), and characters no Danish training text is likely to contain.
DANISH = (
    "Blåbærgrøden på Ærø var lunken, men øllet var koldt.",
    "Første linje\nanden linje\n\n\ttredje, med tabulator  og to mellemrum ",
    "Hør her! 🙂🇩🇰 👩‍👩‍👧 — «citat», ½ kop mælk à 12,50 kr.",
    "ÆØÅ æøå Ü é ß ŋ 日本語 ∑ x² \u00a0hårdt mellemrum",
    "  indrykket\r\nmed CRLF\r\n",
    "",
    " ",
    "\n",
)


class TokenizerChecks(Conformance):
    """``factory(cfg) -> components.Tokenizer``, trained on the embedded Danish sample."""

    slot = "tokenizer"

    def build(self) -> Tokenizer:
        tok = self.component.factory(self.config())
        assert isinstance(tok, Tokenizer), (
            f"{self.what}: the factory must return a kennethlm_core.components.Tokenizer"
        )
        return tok

    def trained(self) -> Tokenizer:
        tok = self.build()
        tok.train(self.sample_texts())
        return tok

    def texts(self) -> list[str]:
        return [*DANISH, self.sample_texts()[0][:3000]]

    def test_round_trip_of_danish_text(self):
        tok = self.trained()
        for text in self.texts():
            back = tok.decode(tok.encode(text))
            assert back == text, f"{self.what}: {text[:40]!r} came back as {back[:40]!r}"

    def test_ids_in_range(self):
        tok = self.trained()
        assert 0 <= tok.doc_id < tok.vocab_size, f"{self.what}: doc_id outside the vocabulary"
        for text in self.texts():
            ids = tok.encode(text)
            assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids), (
                f"{self.what}: ids outside [0, {tok.vocab_size}) for {text[:40]!r}"
            )
            assert tok.doc_id not in ids, f"{self.what}: text encodes to the document token"

    def test_document_token_carries_no_text(self):
        tok = self.trained()
        for text in self.texts():
            ids = tok.encode(text)
            assert tok.decode([tok.doc_id, *ids]) == text, (
                f"{self.what}: the document token decodes to text"
            )

    def test_json_save_and_restore(self, tmp_path):
        tok = self.trained()
        state = tok.to_json()
        json.loads(state)  # plain JSON: loading a tokenizer never executes code
        restored = self.build()
        restored.restore(state)
        tok.save(tmp_path)
        loaded = self.build()
        loaded.load(tmp_path)
        for other in (restored, loaded):
            assert (other.vocab_size, other.doc_id) == (tok.vocab_size, tok.doc_id)
            assert other.fingerprint() == tok.fingerprint()
            for text in self.texts():
                assert other.encode(text) == tok.encode(text), (
                    f"{self.what}: a restored tokenizer encodes {text[:40]!r} differently"
                )

    def test_deterministic_training(self):
        assert self.trained().to_json() == self.trained().to_json(), (
            f"{self.what}: training twice on the same text gave different tokenizers"
        )

    def test_encode_batch_matches_encode(self):
        tok = self.trained()
        texts = self.texts()
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


class CorpusChecks(Conformance):
    """``factory(cfg) -> components.Corpus``: ``documents()`` and ``fingerprint()``."""

    slot = "corpus"
    limit = 500  # documents read per pass

    def documents(self) -> list[Document]:
        corpus = self.component.factory(self.config())
        return list(itertools.islice(corpus.documents(), self.limit))

    def test_documents(self):
        docs = self.documents()
        assert docs, f"{self.what} yields no documents"
        for doc in docs:
            assert isinstance(doc, Document), f"{self.what}: {doc!r} is not a Document"
            assert isinstance(doc.id, str) and doc.id, f"{self.what}: empty or non-str id"
            assert isinstance(doc.text, str) and isinstance(doc.domain, str) and doc.domain
        assert any(doc.text for doc in docs), f"{self.what}: every document is empty"
        ids = [doc.id for doc in docs]
        assert len(set(ids)) == len(ids), f"{self.what}: document ids repeat"

    def test_same_documents_on_every_pass(self):
        assert self.documents() == self.documents(), f"{self.what}: passes differ"

    def test_stable_fingerprint(self):
        a = self.component.factory(self.config()).fingerprint()
        b = self.component.factory(self.config()).fingerprint()
        assert isinstance(a, str) and a and a == b, f"{self.what}: fingerprint not stable"
