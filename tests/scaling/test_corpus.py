from __future__ import annotations

import json

import numpy as np
import pytest

from paperclub.errors import UserError
from paperclub.scaling.corpus import CorpusConfig, load_corpus, prepare_corpus, split_documents
from tests.scaling.conftest import TINY


def test_documents_deduplicated_and_split_by_document():
    docs = [(f"d{i}.py", f"text {i}\n" * 5) for i in range(200)] + [("copy.py", "text 3\n" * 5)]
    train, val, dupes = split_documents(docs, CorpusConfig(val_fraction=0.25))
    assert dupes == 1
    assert sorted(train + val) == sorted({t for _, t in docs})  # every distinct document exactly once
    assert 25 <= len(val) <= 75  # about a quarter of 200 by the path hash
    # a document's split depends on its path only: adding documents moves none of the others
    more = docs + [(f"new{i}.py", f"new {i}\n") for i in range(50)]
    train2, val2, _ = split_documents(more, CorpusConfig(val_fraction=0.25))
    assert set(val) <= set(val2) and set(train) <= set(train2)


def test_prepared_corpus_round_trips_and_budgets_are_nested(tiny_corpus):
    info = tiny_corpus.info
    assert info["tokens"]["train"] == len(tiny_corpus.train) > 50_000
    # the 29 files of `email` less the empty one (email/mime/__init__.py), none duplicated
    assert info["documents"] == {"train": 24, "val": 4, "duplicates_dropped": 0}
    tok = tiny_corpus.tokenizer()
    assert tok.get_vocab_size() == TINY.vocab_size
    # documents are joined by the end-of-text token and decode back to the source text
    ends = np.flatnonzero(tiny_corpus.train == tiny_corpus.eot)
    assert len(ends) == info["documents"]["train"]
    first = tok.decode(tiny_corpus.train[: ends[0]].tolist())
    assert len(first) > 100 and "\ufffd" not in first
    d = tiny_corpus.budget(4096)
    assert np.array_equal(tiny_corpus.budget(8192)[:4096], d)
    with pytest.raises(UserError, match="exceeds"):
        tiny_corpus.budget(len(tiny_corpus.train) + 1)


def test_damaged_or_missing_corpus_gets_a_clear_error(tiny_corpus, tmp_path):
    with pytest.raises(UserError, match="not a prepared corpus"):
        load_corpus(tmp_path)
    broken = tmp_path / "broken"
    prepare_corpus(broken, CorpusConfig(source=TINY.source, vocab_size=300))
    data = (broken / "val.u16").read_bytes()
    (broken / "val.u16").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged"):
        load_corpus(broken)
    (broken / "corpus.json").write_text(json.dumps({"tokens": {}}))
    with pytest.raises(UserError, match="unreadable"):
        load_corpus(broken)
    with pytest.raises(UserError, match="not a folder"):
        prepare_corpus(tmp_path / "x", CorpusConfig(source=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="vocab_size"):
        CorpusConfig(vocab_size=70000)
