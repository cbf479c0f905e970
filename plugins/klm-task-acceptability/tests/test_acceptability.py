"""Minimal pairs: deterministic corruptions that follow the rules, and fixture models whose
scores are known (an oracle scores 1, a model without preferences scores chance)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from klm_task_acceptability import AcceptabilityTask, corrupt, read_conllu, split_words

from kennethlm_core.fixtures import ScriptedModel, per_byte

DDT = Path(__file__).resolve().parents[3].parent / "shared/data/eval/acceptability"

# Written for this test: "Hun så en hund og en hund i haven, sagde Peter Hansen."
CONLLU = """# sent_id = t-1
1\tHun\that\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tså\tse\tVERB\t_\t_\t0\troot\t_\t_
3\ten\ten\tDET\t_\t_\t4\tdet\t_\t_
4\thund\thund\tNOUN\t_\t_\t2\tobj\t_\t_
5\tog\tog\tCCONJ\t_\t_\t7\tcc\t_\t_
6\ten\ten\tDET\t_\t_\t7\tdet\t_\t_
7\thund\thund\tNOUN\t_\t_\t4\tconj\t_\t_
8\ti\ti\tADP\t_\t_\t9\tcase\t_\t_
9\thaven\thave\tNOUN\t_\t_\t2\tobl\t_\tSpaceAfter=No
10\t,\t,\tPUNCT\t_\t_\t11\tpunct\t_\t_
11\tsagde\tsige\tVERB\t_\t_\t2\tparataxis\t_\t_
12\tPeter\tPeter\tPROPN\t_\t_\t11\tnsubj\t_\t_
13\tHansen\tHansen\tPROPN\t_\t_\t12\tflat\t_\tSpaceAfter=No
14\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

"""


@pytest.fixture(scope="module")
def ddt():
    return read_conllu(DDT / "da_ddt-ud-dev.conllu")


def test_conllu_sentences_read_back_as_their_text(ddt):
    texts = [
        line[len("# text = ") :].rstrip("\n")
        for line in (DDT / "da_ddt-ud-dev.conllu").open(encoding="utf-8")
        if line.startswith("# text = ")
    ]
    assert len(ddt) == len(texts) == 564
    same = sum(s.text == t for s, t in zip(ddt, texts, strict=True))
    assert same / len(texts) > 0.95  # the rest differ only in spaces the treebank normalised


def test_corruptions_are_deterministic_and_seeded(ddt):
    first = [corrupt(s) for s in ddt]
    assert first == [corrupt(s) for s in reversed(ddt)][::-1]  # order does not matter
    other = [corrupt(s, seed=1) for s in ddt]
    assert sum(a != b for a, b in zip(first, other, strict=True)) > len(ddt) // 3
    kinds = Counter(c[0] for c in first if c)
    assert kinds["swap"] > 150 and kinds["delete"] > 150


def test_corruptions_follow_the_rules(tmp_path):
    (tmp_path / "t.conllu").write_text(CONLLU, encoding="utf-8")
    (s,) = read_conllu(tmp_path / "t.conllu")
    assert s.text == "Hun så en hund og en hund i haven, sagde Peter Hansen."
    made = {corrupt(s, seed) for seed in range(300)}
    words = s.text.replace(",", "").replace(".", "").split()
    for kind, text in made:
        assert text != s.text and text.endswith(".") and text.count(",") == 1
        assert " ," not in text  # punctuation is never moved or deleted
        got = text.replace(",", "").replace(".", "").split()
        if kind == "swap":
            assert sorted(w.lower() for w in got) == sorted(w.lower() for w in words)
        else:
            assert len(got) == len(words) - 1
        assert "Peter" in got or "Hansen" in got  # a two-part name keeps both parts
        assert "en" in got  # determiners are never deleted
        assert text[0].isupper()
    swapped = {t for k, t in made if k == "swap"}
    assert "Så hun en hund og en hund i haven, sagde Peter Hansen." in swapped  # recased
    assert not any("Hansen Peter" in t for t in swapped)  # names keep their order
    deleted = {t for k, t in made if k == "delete"}
    assert "Hun så en hund og en hund i, sagde Peter Hansen." in deleted
    assert not any(t.startswith("Så ") for t in deleted)  # no verb-first from deleting "Hun"


def test_untagged_sentences_never_touch_the_first_word():
    tokens = split_words('"Det var 5-dobbelt så godt," sagde hun.')
    assert [t.form for t in tokens][:4] == ['"', "Det", "var", "5-dobbelt"]
    assert not tokens[0].space_after and tokens[2].space_after
    from klm_task_acceptability import Sentence

    s = Sentence("x", tokens)
    for seed in range(100):
        kind, text = corrupt(s, seed)
        assert text.startswith('"Det ')


def _task(model, data, limit=80):
    return AcceptabilityTask().evaluate(model, data=str(data), limit=limit)


def test_an_oracle_scores_perfectly(ddt):
    originals = {s.text for s in ddt}
    oracle = ScriptedModel(lambda ctx, text: 0.0 if text in originals else -30.0)
    res = _task(oracle, DDT)
    assert res.n == 80
    for name in ("accuracy", "accuracy/swap", "accuracy/delete", "accuracy_per_byte", "mcc"):
        assert res.metrics[name].value == pytest.approx(1.0), name
    assert all(ctx == "" for ctx, _ in oracle.seen)  # each sentence from a document start


def test_a_model_without_preferences_scores_chance():
    res = _task(ScriptedModel(), DDT)
    assert res.metrics["accuracy"].value == 0.5
    assert res.metrics["accuracy_per_byte"].value == 0.5
    assert res.metrics["mcc"].value == 0.0
    for m in res.metrics.values():
        assert m.chance is not None and m.ci is not None and m.ci[0] <= m.value <= m.ci[1]


def test_a_uniform_model_is_at_chance_per_byte_and_rewards_deletions_in_total():
    res = _task(ScriptedModel(per_byte), DDT)
    assert res.metrics["accuracy/swap"].value == 0.5
    assert res.metrics["accuracy_per_byte"].value == 0.5
    assert res.metrics["accuracy/delete"].value == 0.0  # shorter text, higher total
    assert res.metrics["mcc"].value == 0.0


def test_scala_tables_give_pairs_from_correct_rows_and_mcc_on_all_rows(tmp_path):
    good = [
        "Vi cyklede hjem langs stranden i går.",
        "Hun har altid holdt af lange gåture.",
        "Min bror købte en ny cykel til sommer.",
        "De spiste middag sammen hver søndag.",
    ]
    bad = ["Vi hjem cyklede langs stranden.", "Hun altid har holdt af gåture."]
    rows = [{"text": t, "label": "correct"} for t in good]
    rows += [{"text": t, "label": "incorrect"} for t in bad]
    path = tmp_path / "scala.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    oracle = ScriptedModel(lambda ctx, text: 0.0 if text in good else -30.0)
    res = _task(oracle, path)
    assert res.n == 4 and res.metrics["accuracy"].value == 1.0
    assert res.metrics["mcc"].value == pytest.approx(1.0) and res.metrics["mcc"].n == 6
