"""The fixed pool of text a data-constrained study trains on, tokenized once.

A corpus is built from documents a package ships, so no download is needed: by default the `.py` files of the
running Python's standard library (source, comments and docstrings; 1,790 files, 31 MB on CPython 3.11), or
every text file under a folder the user names. Documents are deduplicated by content, split into train and
validation *by document* (a file's split depends only on its path, so it never moves when files are added; 10%), and a
byte-level BPE tokenizer with a small vocabulary (embeddings must not dominate tiny models) is trained on the
train split alone. Token budgets are nested prefixes of one fixed order of the training documents: the D-token
set is inside the 2D-token set, as in a study that asks what more data buys.

On disk (`prepare_corpus`): `tokenizer.json`, `train.u16` and `val.u16` (uint16 token ids, documents joined by
the end-of-text token) and `corpus.json` (source, counts, and a fingerprint of the documents).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paperclub.atomic import atomic_path, write_json
from paperclub.errors import UserError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
STDLIB = "python-stdlib"
FILES = ("tokenizer.json", "train.u16", "val.u16", "corpus.json")


@dataclass(frozen=True)
class CorpusConfig:
    source: str = STDLIB  # "python-stdlib" or a folder of text files
    pattern: str = "*.py"  # which files of a folder are documents
    vocab_size: int = 2048
    val_fraction: float = 0.1
    max_doc_bytes: int = 200_000  # longer files (generated tables) are left out
    shuffle_seed: int = 0  # the fixed order of training documents that budgets are prefixes of

    def __post_init__(self) -> None:
        if not 256 < self.vocab_size <= 65535:
            raise UserError(f"vocab_size {self.vocab_size}: expected 257..65535 (token ids are stored as uint16)")
        if not 0.0 < self.val_fraction < 0.5:
            raise UserError(f"val_fraction {self.val_fraction}: expected a fraction in (0, 0.5)")


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus: token arrays (memory-mapped) and what they were made from."""

    root: Path
    train: np.ndarray  # uint16 token ids
    val: np.ndarray
    info: dict
    eot: int

    @property
    def vocab_size(self) -> int:
        return int(self.info["vocab_size"])

    def budget(self, tokens: int) -> np.ndarray:
        """The first `tokens` training tokens: budgets are nested prefixes of one fixed document order."""
        if tokens > len(self.train):
            raise UserError(f"a budget of {tokens:,} tokens exceeds the corpus's {len(self.train):,} training tokens")
        return self.train[:tokens]

    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.root / "tokenizer.json"))


def source_documents(cfg: CorpusConfig) -> tuple[str, list[tuple[str, str]]]:
    """(a description of the source, [(relative path, text)]) in path order."""
    if cfg.source == STDLIB:
        root, pattern = Path(sysconfig.get_paths()["stdlib"]), "*.py"
        import platform

        where = f"CPython {platform.python_version()} standard library ({root})"
    else:
        root, pattern = Path(cfg.source).expanduser(), cfg.pattern
        where = f"{pattern} under {root}"
        if not root.is_dir():
            raise UserError(f"corpus source {root} is not a folder: give a folder of text files or {STDLIB!r}")
    docs = []
    for path in sorted(root.rglob(pattern)):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts or not path.is_file():
            continue
        if path.stat().st_size > cfg.max_doc_bytes:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append((rel.as_posix(), text))
    if len(docs) < 20:
        raise UserError(f"the corpus source ({where}) has {len(docs)} readable documents: need at least 20")
    return where, docs


def split_documents(docs: list[tuple[str, str]], cfg: CorpusConfig) -> tuple[list[str], list[str], int]:
    """Deduplicate by content, then split by a hash of the path. Returns (train texts, validation texts, number of
    duplicates dropped); both splits in a fixed shuffled order, so any prefix of either is a sample of documents."""
    seen: set[bytes] = set()
    train, val = [], []
    for rel, text in docs:
        digest = hashlib.sha256(text.encode()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        bucket = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "little") / 2**64
        (val if bucket < cfg.val_fraction else train).append(text)
    rng = np.random.default_rng(cfg.shuffle_seed)
    train = [train[i] for i in rng.permutation(len(train))]
    val = [val[i] for i in rng.permutation(len(val))]
    return train, val, len(docs) - len(seen)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (every byte is a token, so nothing is ever unknown) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def encode(tok, texts: list[str], eot: int) -> np.ndarray:
    """Token ids of the texts, each followed by the end-of-text token, as one uint16 array."""
    out = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.append(np.asarray(enc.ids, dtype=np.uint16))
        out.append(np.asarray([eot], dtype=np.uint16))
    return np.concatenate(out)


def prepare_corpus(out: Path, cfg: CorpusConfig) -> dict:
    """Build the corpus under `out` (atomically, as a whole folder); returns its `corpus.json`."""
    where, docs = source_documents(cfg)
    train, val, dupes = split_documents(docs, cfg)
    log.info("corpus: %d documents (%d duplicates dropped): %d train, %d validation", len(train) + len(val), dupes,
             len(train), len(val))
    tok = train_tokenizer(train, cfg.vocab_size)
    eot = tok.token_to_id(EOT)
    train_ids, val_ids = encode(tok, train, eot), encode(tok, val, eot)
    fingerprint = hashlib.sha256()
    for text in train + val:
        fingerprint.update(hashlib.sha256(text.encode()).digest())
    info = {
        "source": where, "config": cfg.__dict__, "vocab_size": tok.get_vocab_size(), "eot": eot,
        "documents": {"train": len(train), "val": len(val), "duplicates_dropped": dupes},
        "tokens": {"train": int(len(train_ids)), "val": int(len(val_ids))},
        "bytes": {"train": sum(len(t.encode()) for t in train), "val": sum(len(t.encode()) for t in val)},
        "fingerprint": fingerprint.hexdigest()[:16],
    }
    with atomic_path(out) as tmp:
        tmp.mkdir()
        tok.save(str(tmp / "tokenizer.json"))
        train_ids.tofile(tmp / "train.u16")
        val_ids.tofile(tmp / "val.u16")
        write_json(tmp / "corpus.json", info)
    return info


def load_corpus(root: Path) -> Corpus:
    root = Path(root)
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise UserError(f"{root} is not a prepared corpus (missing {', '.join(missing)}): run "
                        f"`paperclub scaling prepare --out {root}`")
    try:
        info = json.loads((root / "corpus.json").read_text())
        arrays = {s: np.memmap(root / f"{s}.u16", dtype=np.uint16, mode="r") for s in ("train", "val")}
        counts = {s: int(info["tokens"][s]) for s in arrays}
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{root}/corpus.json is unreadable ({e}): prepare the corpus again") from None
    for split, arr in arrays.items():
        if len(arr) != counts[split]:
            raise UserError(f"{root}/{split}.u16 holds {len(arr):,} tokens, corpus.json says {counts[split]:,}: "
                            "the corpus is damaged; prepare it again")
    return Corpus(root, arrays["train"], arrays["val"], info, int(info["eot"]))
