"""Token-classification (NER) data: CoNLL or JSONL words with IOB2 tags (see `load_token_tags`)."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.data.dataset import Dataset, Example, random_split
from zoo.errors import InputError

TOKEN_LAYOUT = ("a CoNLL file (.conll/.txt: one word per line, its tag in the last column, a blank line between "
                "sentences) or JSONL with {\"tokens\": [...], \"tags\": [...]} per line (optionally \"split\")")


def load_token_tags(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Sentences of (word, IOB2 tag). Labels: "O" first, then the other tags sorted. Every tag is "O",
    "B-TYPE" or "I-TYPE"; a sentence's words and tags must pair up."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--data {path}: token classification needs {TOKEN_LAYOUT}")
    try:
        rows = _conll(path) if path.suffix.lower() in (".conll", ".txt") else _token_jsonl(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InputError(f"{path} holds no sentences; expected {TOKEN_LAYOUT}")
    names = sorted({tag for _, words, tags, _ in rows for tag in tags if tag != "O"})
    labels = ["O", *names]
    if len(labels) < 2:
        raise InputError(f"{path}: every word is tagged O; token classification needs at least one entity type")
    examples = {"train": [], "val": []}
    for where, words, tags, split in rows:
        example = Example(" ".join(words), 0, words=tuple(words), tags=tuple(labels.index(t) for t in tags))
        examples["val" if split == "val" else "train"].append(example)
    if examples["val"]:
        return Dataset("token-classification", "text", labels, examples["train"], examples["val"], str(path), "given")
    train, val = random_split(examples["train"], val_fraction, seed)
    return Dataset("token-classification", "text", labels, train, val, str(path), f"random seed={seed} fraction={val_fraction}")


def _check_tags(where: str, words: list[str], tags: list[str]) -> None:
    if len(words) != len(tags):
        raise InputError(f"{where}: {len(words)} words but {len(tags)} tags; every word needs one tag")
    for word, tag in zip(words, tags):
        if not word.strip():
            raise InputError(f"{where}: an empty word; words are non-empty strings")
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise InputError(f"{where}: tag {tag!r} of {word!r}; expected O, B-TYPE or I-TYPE (IOB2)")


def _conll(path: Path) -> list[tuple[str, list[str], list[str], str]]:
    rows, words, tags, start = [], [], [], 1
    lines = path.read_text("utf-8").splitlines() + [""]
    for number, line in enumerate(lines, start=1):
        if line.startswith("-DOCSTART-"):
            continue
        if not line.strip():
            if words:
                where = f"{path}:{start}"
                _check_tags(where, words, tags)
                rows.append((where, words, tags, "train"))
            words, tags, start = [], [], number + 1
            continue
        columns = line.split()
        if len(columns) < 2:
            raise InputError(f"{path}:{number}: {line.strip()!r}; expected a word and its tag (last column)")
        words.append(columns[0])
        tags.append(columns[-1])
    return rows


def _token_jsonl(path: Path) -> list[tuple[str, list[str], list[str], str]]:
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
        if (not isinstance(row, dict) or not isinstance(row.get("tokens"), list) or not isinstance(row.get("tags"), list)
                or not all(isinstance(v, str) for v in row["tokens"] + row["tags"])):
            raise InputError(f'{where}: expected {{"tokens": ["word", ...], "tags": ["O", ...]}}')
        _check_tags(where, row["tokens"], row["tags"])
        rows.append((where, row["tokens"], row["tags"], str(row.get("split", "train"))))
    return rows
