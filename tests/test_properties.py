"""Property tests (hypothesis): tokenizers round-trip any text; config parsing round-trips
what it writes and answers anything else with a ConfigError, never another exception.

Example counts are kept small (the whole file takes seconds); raise them locally with
HYPOTHESIS_MAX_EXAMPLES=1000 to search harder.
"""

from __future__ import annotations

import math
import os
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kennethlm_core.config import (
    RunConfig,
    coerce,
    field_types,
    parse_count,
    parse_duration,
    parse_mix,
    parse_set,
)
from kennethlm_core.errors import ConfigError

from .test_tokenizers import INSTALLED, SAMPLE_TEXTS

EXAMPLES = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60"))
quick = settings(max_examples=EXAMPLES, deadline=None)

# any Unicode text (hypothesis leaves out lone surrogates, which no UTF-8 text contains),
# with Danish letters, whitespace and the document token's spelling made likely
danish = st.sampled_from(list("æøåÆØÅ \n\t\r") + ["<|doc|>", "🇩🇰", "a\u0308"])
texts = st.lists(st.one_of(st.text(max_size=12), danish), max_size=12).map("".join)


@pytest.fixture(scope="module")
def tokenizers():
    from kennethlm_core.config import build_config
    from kennethlm_core.plugins import get_registry

    out = {}
    for name in INSTALLED:  # char and byte, and every tokenizer plugin installed
        tok = get_registry().get("tokenizer", name).factory(build_config())
        tok.train(SAMPLE_TEXTS)
        out[name] = tok
    return out


@quick
@given(text=texts)
def test_every_installed_tokenizer_round_trips_any_unicode(tokenizers, text):
    for name, tok in tokenizers.items():
        ids = tok.encode(text)
        assert tok.decode(ids) == text, name
        assert tok.doc_id not in ids, name
        assert all(0 <= i < tok.vocab_size for i in ids), name


@quick
@given(batch=st.lists(texts, max_size=4))
def test_batch_encoding_equals_one_by_one(tokenizers, batch):
    for tok in tokenizers.values():
        assert tok.encode_batch(batch) == [tok.encode(t) for t in batch]


# -- config parsing ------------------------------------------------------------------------


def never_crashes(parse, text):
    """``parse(text)`` returns, or raises ConfigError; any other exception is a bug."""
    try:
        return parse(text)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)  # one line for the CLI
        return None


@quick
@given(n=st.integers(0, 10**12))
def test_counts_round_trip(n):
    assert parse_count(str(n)) == n
    assert parse_count(f"{n:_}") == n
    assert parse_count(f"{n}k") == n * 1000


@quick
@given(text=st.text(max_size=10))
def test_any_count_text_parses_or_is_a_config_error(text):
    value = never_crashes(parse_count, text)
    assert value is None or isinstance(value, int)


@quick
@given(h=st.integers(0, 99), m=st.integers(0, 59), s=st.integers(0, 59))
def test_durations_round_trip(h, m, s):
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s
    assert parse_duration(f"{m}m") == m * 60
    assert parse_duration(str(s)) == s


@quick
@given(text=st.text(alphabet="0123456789hms.: x", max_size=8) | st.text(max_size=8))
def test_any_duration_text_parses_or_is_a_config_error(text):
    value = never_crashes(parse_duration, text)
    assert value is None or (isinstance(value, float) and value >= 0)


keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)


@quick
@given(pairs=st.dictionaries(keys, values, max_size=4))
def test_set_round_trips(pairs):
    parsed = parse_set([f"{k}={v}" for k, v in pairs.items()])
    expected = {}
    for k, v in pairs.items():
        expected[k.replace("-", "_")] = v.strip()
    assert parsed == expected


@quick
@given(item=st.text(max_size=12))
def test_any_set_item_parses_or_is_a_config_error(item):
    never_crashes(parse_set, [item])


domains = st.text(string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=8)
weights = st.floats(0, 1e6, allow_nan=False)


@quick
@given(mix=st.dictionaries(domains, weights, min_size=1, max_size=5))
def test_mix_round_trips_or_refuses_all_zero(mix):
    text = ",".join(f"{d}={w!r}" for d, w in mix.items())
    if not any(mix.values()):
        assert never_crashes(parse_mix, text) is None
    else:
        assert parse_mix(text) == mix


@quick
@given(text=st.text(max_size=16))
def test_any_mix_text_parses_or_is_a_config_error(text):
    value = never_crashes(parse_mix, text)
    assert value is None or all(math.isfinite(w) and w >= 0 for w in value.values())


FIELDS = sorted(field_types().items())


@quick
@given(data=st.data())
def test_every_field_coerces_its_own_text_and_refuses_nonsense_clearly(data):
    key, kind = data.draw(st.sampled_from(FIELDS))
    like = getattr(RunConfig(), key)
    if kind is bool:
        value = data.draw(st.booleans())
        assert coerce(key, str(value).lower(), like) is value
    elif kind is int:
        value = data.draw(st.integers(0, 10**9))
        assert coerce(key, str(value), like) == value
    elif kind is float and key != "time":
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False))
        assert coerce(key, repr(value), like) == value
    never_crashes(lambda t: coerce(key, t, like), data.draw(st.text(max_size=8)))


@quick
@given(
    changes=st.fixed_dictionaries(
        {},
        optional={
            "n_layer": st.integers(1, 64),
            "lr": st.floats(1e-6, 1.0),
            "mix": st.just("news=0.5,legal=0.5"),
            "window": st.integers(1, 512),  # a plugin's option: kept flat in config.json
        },
    )
)
def test_config_json_round_trips(changes):
    import json

    cfg = RunConfig().replace(**changes)
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
