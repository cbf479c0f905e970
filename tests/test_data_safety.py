"""The data caches under misuse: parallel processes, killed builders, corpora changing while
they are read, hub downloads that give nothing.

The parallel tests run real processes (``CHILD``). A child pauses at a named point (``pause``)
until the test writes a line to its stdin, and prints ``event: <point>`` when it gets there;
a child waiting for another's lock says so in its log. The test reads those lines, so the
order of events is the test's choice, never a race that a sleep would paper over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kennethlm_core.builtin.corpora import HubCorpus
from kennethlm_core.config import build_config, resolve
from kennethlm_core.data import prepare_data
from kennethlm_core.errors import DataError

from .conftest import PYTHON, REPO, assert_one_line_error
from .test_hub import readme, rows

CHILD = r"""
import hashlib, json, sys
from kennethlm_core import data

def pause(event):
    print("event:", event, flush=True)
    sys.stdin.readline()

def pause_before(owner, name, event):
    real = getattr(owner, name)
    def hooked(*args, **kwargs):
        pause(event)
        return real(*args, **kwargs)
    setattr(owner, name, hooked)

hooks, mode, args = sys.argv[1].split(","), sys.argv[2], sys.argv[3:]
if "survey" in hooks:  # the plan is made; the corpus is read again after this
    real_survey = data.splits.survey  # patched where plan_split reads it
    data.splits.survey = lambda corpus: [real_survey(corpus), pause("surveyed")][0]
if "presurvey" in hooks:  # before the corpus is read for the plan
    pause_before(data.splits, "survey", "surveying")
if "tokenizer" in hooks:  # inside the tokenizer lock, before training
    from kennethlm_core.builtin.tokenizers import CharTokenizer
    pause_before(CharTokenizer, "train", "build tokenizer")
if "cache" in hooks:  # inside the token cache's lock, before tokenizing
    pause_before(data.prepare, "_build_cache", "build cache")
if mode == "klm":
    from kennethlm_core.cli import main
    main(args)
else:
    from kennethlm_core.config import build_config, resolve
    from kennethlm_core.plugins import get_registry
    registry = get_registry()
    cfg = resolve(build_config(overrides=json.loads(args[0])), registry)
    prepared = data.prepare_data(cfg, registry, log=lambda m: print("log:", m, flush=True))
    digest = lambda b: hashlib.sha256(b).hexdigest()
    result = {name: digest(prepared.split(name).tokens.tobytes()) for name in data.SPLITS}
    result["tokenizer"] = digest(prepared.tokenizer.to_json().encode())
    print("result:", json.dumps(result), flush=True)
"""

WAITING = "log: waiting for another process that is preparing"


class Children:
    """Child processes sharing one token cache; all are killed after ``limit`` seconds, so a
    child that blocks fails the test instead of hanging it."""

    def __init__(self, tmp_path, limit: float = 300):
        self.cache, self.tmp, self.procs = tmp_path / "cache", tmp_path, []
        self.lines: dict[subprocess.Popen, list[str]] = {}
        self.watchdog = threading.Timer(limit, self.kill)
        self.watchdog.start()

    def start(self, hooks: str, mode: str, *args) -> subprocess.Popen:
        err = open(self.tmp / f"child{len(self.procs)}.err", "w+")
        proc = subprocess.Popen(
            [PYTHON, "-c", CHILD, hooks or "-", mode, *map(str, args)],
            cwd=REPO,
            env={**os.environ, "KLM_CACHE": str(self.cache)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        proc.err = err
        self.procs.append(proc)
        self.lines[proc] = []
        return proc

    def next_event(self, proc) -> str:
        """The next pause point ``proc`` reached, or "waiting" when it waits for a lock."""
        for line in proc.stdout:
            self.lines[proc].append(line.rstrip("\n"))
            if line.startswith("event: "):
                return line.removeprefix("event: ").strip()
            if line.startswith(WAITING):
                return "waiting"
        raise AssertionError(f"the child ended without an event:\n{self.stderr(proc)}")

    def release(self, *procs) -> None:
        for proc in procs or self.procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def finish(self, proc) -> list[str]:
        """Let ``proc`` run to its end; its stdout lines."""
        proc.stdin.close()  # later pauses pass at once
        self.lines[proc] += proc.stdout.read().splitlines()
        proc.wait()
        return self.lines[proc]

    def stderr(self, proc) -> str:
        proc.err.seek(0)
        return proc.err.read()

    def result(self, proc) -> dict:
        lines = self.finish(proc)
        assert proc.returncode == 0, self.stderr(proc)
        return json.loads(next(x for x in lines if x.startswith("result: "))[8:])

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()

    def close(self) -> None:
        self.watchdog.cancel()
        self.kill()
        for proc in self.procs:
            proc.wait()
            proc.err.close()


@pytest.fixture
def children(tmp_path):
    kids = Children(tmp_path)
    yield kids
    kids.close()


TOPICS = ("havet", "skoven", "byen", "marken", "fjorden", "heden", "mosen", "kysten")


def text_corpus(folder, word="og"):
    """Eight .txt documents, written here for the tests; ``word`` varies the text, not its
    length or its chunks."""
    folder.mkdir(exist_ok=True)
    for i, topic in enumerate(TOPICS):
        line = f"Dokument {i} handler om {topic}, {word} om vejret ved {topic} i dag.\n"
        (folder / f"{i}-{topic}.txt").write_text(line * 40, encoding="utf-8")
    return folder


def settings(corpus) -> str:
    return json.dumps({"corpus": str(corpus), "tokenizer": "char", "val_fraction": 0.2})


def test_parallel_processes_train_the_tokenizer_and_fill_the_cache_once(children, tmp_path):
    corpus = text_corpus(tmp_path / "corpus")
    a, b = (children.start("tokenizer,cache", "prepare", settings(corpus)) for _ in range(2))
    first = {a: children.next_event(a), b: children.next_event(b)}
    assert sorted(first.values()) == ["build tokenizer", "waiting"]  # one trains, one waits
    builder = a if first[a] == "build tokenizer" else b
    children.release(builder)
    # The tokenizer is published; whichever takes the cache's lock first tokenizes.
    assert sorted([children.next_event(a), children.next_event(b)]) == ["build cache", "waiting"]
    children.release()
    results = [children.result(a), children.result(b)]
    assert results[0] == results[1]  # the same tokens and the same tokenizer
    logs = "\n".join(children.lines[a] + children.lines[b])
    assert logs.count("training the char tokenizer") == 1
    assert logs.count("tokenizing corpus") == 1 and logs.count("reusing the token cache") == 1
    assert len(list((children.cache / "tokenizers").glob("*.json"))) == 1
    assert len(list((children.cache / "tokens").glob("*/meta.json"))) == 1


def test_a_killed_builder_leaves_a_lock_that_blocks_no_one(children, tmp_path):
    corpus = text_corpus(tmp_path / "corpus")
    killed = children.start("cache", "prepare", settings(corpus))
    assert children.next_event(killed) == "build cache"  # it holds the cache's lock
    locks = list((children.cache / "tokens").glob("*.lock"))
    assert len(locks) == 1
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert locks[0].exists()  # the file stays; the OS lock went with its process
    later = children.start("", "prepare", settings(corpus))
    children.result(later)  # would be killed by the watchdog if the lock still held
    assert any(line.startswith("log: tokenizing corpus") for line in children.lines[later])


# When the corpus changes, and what that leaves: (the child's pause point, whether the change
# keeps the files' sizes and modification times, tokenizers cached after the failed run, and
# whether the next run trains one).
CHANGES = {
    # During tokenizer training: the tokenizer would be keyed by the old files.
    "rewritten-after-the-survey": ("survey", False, 0, True),
    # Same sizes and times (cp -p, rsync -t): the fingerprint hashes the files' contents, so
    # it sees this change like the first one.
    "same-size-and-mtime": ("survey", True, 0, True),
    # Before the text is read at all (the tokenizer is cached already): the text is read
    # whole and the same twice, but the tokens would be keyed by the old files.
    "rewritten-before-the-survey": ("presurvey", False, 1, True),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_corpus_changed_while_it_is_prepared_is_not_cached(
    children, tmp_path, monkeypatch, registry, change
):
    hook, keep_mtime, tokenizers, trains = CHANGES[change]
    corpus = text_corpus(tmp_path / "corpus")
    monkeypatch.setenv("KLM_CACHE", str(children.cache))
    cfg = resolve(build_config(overrides=json.loads(settings(corpus))), registry)
    if hook == "presurvey":
        prepare_data(cfg, registry)
        shutil.rmtree(children.cache / "tokens")
    args = ("data", "stats", "--corpus", corpus, "--tokenizer", "char", "--set", "val_fraction=0.2")
    child = children.start(hook, "klm", *args)
    assert children.next_event(child) == {"survey": "surveyed", "presurvey": "surveying"}[hook]
    before = {f: f.stat() for f in corpus.iterdir()}
    text_corpus(corpus, word="ej")  # same files, sizes and chunks; other text
    if keep_mtime:
        for f, st in before.items():
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    children.release(child)
    children.finish(child)
    err = children.stderr(child)  # the progress lines before it, then one line that says why
    assert child.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("klm: error: corpus 'corpus' changed while")
    assert ("training the char tokenizer" in err) == (hook == "survey")
    assert not list((children.cache / "tokens").glob("*/meta.json"))  # no tokens cached
    assert len(list((children.cache / "tokenizers").glob("*.json"))) == tokenizers

    messages = []  # once the corpus is still, it prepares, from the new text
    prepared = prepare_data(cfg, registry, log=messages.append)
    assert any(m.startswith("training") for m in messages) == trains
    val, tok = prepared.val, prepared.tokenizer
    text = tok.decode([t for t in val.tokens.tolist() if t != tok.doc_id])
    assert "ej om vejret" in text and "og om vejret" not in text
    assert val.n_bytes == len(text.encode())  # the rows count the bytes the tokens hold


# -- the hub: an empty download is never kept ---------------------------------------------


def hub_copy(folder, text=True):
    """A local copy of a dynaword-like repository, two sources; ``text=False``: every row's
    text is empty, so a download gives no documents."""
    for source in ("tv2r", "ft"):
        (folder / "data" / source).mkdir(parents=True)
        table = rows(source, n=6)
        if not text:
            table = [row | {"text": ""} for row in table]
        pq.write_table(pa.Table.from_pylist(table), folder / "data" / source / "data.parquet")
    readme(folder, {s: f"data/{s}/data.parquet" for s in ("tv2r", "ft")})
    return folder


def snapshot_of(corpus):
    from kennethlm_core.data import cache_root

    return cache_root() / "hub" / f"{corpus.name}-{corpus.fingerprint()}"


def test_an_empty_hub_download_is_not_kept_and_the_next_run_downloads_again(tmp_path, monkeypatch):
    corpus = HubCorpus("x/y", "dynaword", path=hub_copy(tmp_path / "copy"))
    real = HubCorpus._stream
    monkeypatch.setattr(HubCorpus, "_stream", lambda *args: iter(()))  # the hub gave nothing
    with pytest.raises(DataError, match=r"download of dynaword .* gave no documents \(sources"):
        list(corpus.documents())
    assert not snapshot_of(corpus).exists()
    monkeypatch.setattr(HubCorpus, "_stream", real)
    docs = list(corpus.documents())  # tried again, same snapshot name
    assert len(docs) == 12 and snapshot_of(corpus).exists()


def test_an_empty_snapshot_left_by_an_older_klm_is_downloaded_again(tmp_path):
    corpus = HubCorpus("x/y", "dynaword", path=hub_copy(tmp_path / "copy"))
    snapshot = snapshot_of(corpus)
    shutil.rmtree(snapshot, ignore_errors=True)  # a copy of the same rows shares its snapshot
    snapshot.mkdir(parents=True)
    schema = pa.schema([(c, pa.string()) for c in ("id", "text", "domain")])
    pq.write_table(schema.empty_table(), snapshot / "0000-tv2r.parquet")
    assert {d.source for d in corpus.documents()} == {"tv2r", "ft"}


def test_klm_says_in_one_line_that_the_download_gave_no_documents(klm, tmp_path):
    copy = hub_copy(tmp_path / "copy", text=False)
    code, out, err = klm(
        "data", "stats", "--corpus", "dynaword", "--tokenizer", "byte", "--set", f"hub_path={copy}"
    )
    assert_one_line_error(code, err, "gave no documents", "next run downloads it again")
    corpus = HubCorpus("x/y", "dynaword", path=copy)
    assert not snapshot_of(corpus).exists()


def test_the_digest_of_a_pass_sees_text_moved_between_chunks():
    from kennethlm_core.data import _absorb

    def digest(*texts):
        h = hashlib.blake2b(digest_size=16)
        for text in texts:
            _absorb(h, text)
        return h.hexdigest()

    assert digest("ab", "c") != digest("a", "bc")
