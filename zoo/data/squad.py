"""Extractive question-answering data: SQuAD v1.1 JSON (see `load_squad`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from zoo.data.dataset import Dataset, Example
from zoo.errors import InputError

SQUAD_LAYOUT = ('SQuAD v1.1 JSON: {"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", '
                '"answers": [{"text", "answer_start"}]}]}]}]}, one file (split by context) or a folder with '
                "train.json and val.json (or dev.json)")
ANSWER_LABELS = ["start", "end"]  # the span head's two outputs per token


def load_squad(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Questions with their context and answers. A single file is split by context (a paragraph's
    questions stay on one side); train.json + val.json (or dev.json) are used as given. Every answer
    must be found at its answer_start; unanswerable questions (SQuAD v2) are refused."""
    path = Path(path)
    if path.is_dir():
        val_file = next((path / n for n in ("val.json", "dev.json") if (path / n).is_file()), None)
        if not (path / "train.json").is_file() or val_file is None:
            raise InputError(f"--data {path}: expected train.json and val.json (or dev.json); {SQUAD_LAYOUT}")
        return Dataset("question-answering", "text", ANSWER_LABELS, _squad(path / "train.json"), _squad(val_file), str(path), "given")
    examples = _squad(path)
    contexts = sorted({e.item for e in examples})
    if len(contexts) < 2:
        raise InputError(f"{path}: one context; a validation split needs at least two (add paragraphs, or give "
                         "train.json and val.json)")
    held = min(max(1, round(len(contexts) * val_fraction)), len(contexts) - 1)
    random.Random(seed).shuffle(contexts)
    val_contexts = set(contexts[:held])
    return Dataset("question-answering", "text", ANSWER_LABELS, [e for e in examples if e.item not in val_contexts],
                   [e for e in examples if e.item in val_contexts], str(path),
                   f"random by context seed={seed} fraction={val_fraction}")


def _squad(file: Path) -> list[Example]:
    try:
        document = json.loads(file.read_text("utf-8"))
        paragraphs = [p for article in document["data"] for p in article["paragraphs"]]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not valid JSON: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise InputError(f"{file}: expected {SQUAD_LAYOUT} (missing {exc})") from None
    examples = []
    for paragraph in paragraphs:
        context = paragraph.get("context")
        for qa in paragraph.get("qas", []):
            where = f"{file}: question {qa.get('id', qa.get('question', '?'))!r}"
            if not isinstance(context, str) or not isinstance(qa.get("question"), str):
                raise InputError(f"{where}: expected a context and a question (strings); {SQUAD_LAYOUT}")
            if qa.get("is_impossible") or not qa.get("answers"):
                raise InputError(f"{where} has no answer; unanswerable questions (SQuAD v2) are not supported")
            answers = []
            for item in qa["answers"]:
                start, text = item.get("answer_start"), item.get("text")
                if not isinstance(start, int) or not isinstance(text, str) or context[start:start + len(text)] != text:
                    raise InputError(f"{where}: answer {text!r} is not at character {start} of its context")
                answers.append((start, text))
            examples.append(Example(context, 0, question=qa["question"], answers=tuple(answers)))
    if not examples:
        raise InputError(f"{file} holds no questions; expected {SQUAD_LAYOUT}")
    return examples
