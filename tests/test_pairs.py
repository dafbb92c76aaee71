"""Contrastive pairs before the probe (zoo.pairs, SetFit's first stage, `--pairs on`): the pairs setfit
1.x samples, counted by hand; a stage that pulls same-class embeddings together; the recipe's choice and
its reason; and a real run with the real MiniLM weights."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import combinations_with_replacement
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.data import Dataset, Example
from zoo.pairs import BATCH, ITERATIONS, MAX_PAIRS, sample_pairs, train_pairs
from zoo.probe import FIXED_C
from zoo.errors import InputError
from zoo.recipe import resolve
from zoo.registry import get_model
from zoo.training import FinetuneConfig, finetune


def test_pairs_are_setfits_every_pair_cycled_to_twenty_per_text_and_alternating() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    pairs = sample_pairs(labels, seed=3)
    # every unordered pair with self pairs: 3*4/2 + 2*3/2 + 1 = 10 positives, 21 - 10 = 11 negatives
    unique = set(combinations_with_replacement(range(6), 2))
    assert len(unique) == 21
    assert {(p.first, p.second) for p in pairs} == unique  # 120 of each kind: every pair is reached
    assert sum(p.same for p in pairs) == sum(not p.same for p in pairs) == ITERATIONS * 6 == 120
    assert all(p.same == (labels[p.first] == labels[p.second]) for p in pairs)
    positives = Counter((p.first, p.second) for p in pairs if p.same)
    assert len(positives) == 10 and max(positives.values()) - min(positives.values()) <= 1  # cycled evenly
    assert sample_pairs(labels, seed=3) == pairs and sample_pairs(labels, seed=4) != pairs


def test_pairs_are_bounded_and_need_two_classes() -> None:
    many = [i % 4 for i in range(400)]
    assert len(sample_pairs(many, seed=0)) == MAX_PAIRS == 2_000  # 2 x 20 x 400 capped
    assert sample_pairs([1, 1, 1], seed=0) == []  # no negative pair: nothing to contrast


def test_large_sets_draw_their_pairs_without_listing_them() -> None:
    """20,000 texts hold 200 M pairs: listing them would take gigabytes; drawn, the pairs are the same
    count, distinct, of the right kind, and fixed by the seed."""
    labels = [i % 3 for i in range(20_000)]
    pairs = sample_pairs(labels, seed=1)
    assert len(pairs) == MAX_PAIRS and sum(p.same for p in pairs) == MAX_PAIRS // 2
    assert len({(p.first, p.second) for p in pairs}) == MAX_PAIRS
    assert all(p.first <= p.second and p.same == (labels[p.first] == labels[p.second]) for p in pairs)
    assert sample_pairs(labels, seed=1) == pairs


@pytest.mark.parametrize("labels", [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 2]])
def test_drawn_pairs_are_uniform_like_the_listed_ones(monkeypatch, labels) -> None:
    """The drawn path (forced here by a limit of 0) picks each pair of a kind, self pairs included, as
    often as cycling the shuffled list does: 5 of the kind's pairs per call, each in 5/count of the calls."""
    import zoo.pairs

    seeds = 3000
    for limit in (10**9, 0):
        monkeypatch.setattr(zoo.pairs, "ENUMERATE_LIMIT", limit)
        counts: Counter = Counter()
        for seed in range(seeds):
            counts.update({(p.first, p.second, p.same) for p in sample_pairs(labels, seed, iterations=1, max_pairs=10)})
        for same in (True, False):
            kind = [(i, j) for i, j in combinations_with_replacement(range(len(labels)), 2)
                    if (labels[i] == labels[j]) == same]
            expected = seeds * 5 / len(kind)
            spread = 5 * math.sqrt(expected * (1 - 5 / len(kind)))  # five binomial standard deviations
            for i, j in kind:
                assert abs(counts[(i, j, same)] - expected) < spread, (limit, i, j, same, counts[(i, j, same)], expected)


class _Bag(nn.Module):
    """A toy sentence encoder: mean of learned word vectors, L2-normalised (like MiniLM's output)."""

    def __init__(self, words: list[str]):
        super().__init__()
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = nn.Embedding(len(words), 8)
        self.dropout = nn.Dropout(0.0)

    def forward(self, texts: list[str]) -> torch.Tensor:
        rows = [self.vectors(torch.tensor([self.index[w] for w in t.split()])).mean(0) for t in texts]
        return nn.functional.normalize(self.dropout(torch.stack(rows)), dim=-1)


def _mean_cosines(encoder: _Bag, texts: list[str], labels: list[int]) -> tuple[float, float]:
    with torch.no_grad():
        e = encoder(texts)
    same, different = [], []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            (same if labels[i] == labels[j] else different).append(float(e[i] @ e[j]))
    return sum(same) / len(same), sum(different) / len(different)


def test_the_stage_pulls_classes_apart_and_is_deterministic_for_a_seed() -> None:
    words = ["good", "great", "fine", "bad", "awful", "poor", "film", "plot"]
    texts = ["good film", "great plot", "fine film", "good plot", "bad film", "awful plot", "poor film", "bad plot"]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        encoder = _Bag(words)
        before = _mean_cosines(encoder, texts, labels)
        stage = train_pairs(encoder, texts, labels, seed=5, encode=encoder, lr=0.05)  # toy vectors: a toy's rate
        after = _mean_cosines(encoder, texts, labels)
        weights.append(encoder.vectors.weight.detach().clone())
    assert stage.pairs == 2 * ITERATIONS * 8 and stage.steps == math.ceil(stage.pairs / BATCH) == 20
    assert stage.last_loss < 0.5 * stage.first_loss, stage
    # what the loss asks: same-class cosines towards 1, different-class ones towards 0
    assert after[0] - after[1] > before[0] - before[1] + 0.2, (before, after)  # 0.003 -> 0.256
    assert torch.equal(weights[0], weights[1])


def _text_dataset(per_class: int, split: str = "given") -> Dataset:
    train = [Example(f"text {i}", i % 2) for i in range(2 * per_class)]
    return Dataset("text-classification", "text", ["neg", "pos"], train, train[:2], "data", split)


def test_the_recipe_leaves_pairs_off_says_why_and_keeps_them_when_asked() -> None:
    minilm = get_model("all-minilm-l6-v2")
    auto, lines = resolve(FinetuneConfig(), minilm, _text_dataset(8))
    assert auto.pairs == "off" and auto.after_probe == "gated"
    assert any(line.startswith("pairs = off: not measured on every text row yet (benchmarks/transfer.py") for line in lines)
    bert, lines = resolve(FinetuneConfig(), get_model("bert-base-uncased"), _text_dataset(8))
    assert bert.pairs == "off" and any("not trained for cosine similarity" in line for line in lines)
    asked, lines = resolve(FinetuneConfig(pairs="on"), minilm, _text_dataset(8))
    assert asked.pairs == "on" and "pairs = on: given" in lines
    assert asked.after_probe == "finetune"  # the pair features saw every label: no out-of-fold gate
    setfit, _ = resolve(FinetuneConfig(probe_only=True, pairs="on"), minilm, _text_dataset(8))
    assert setfit.pairs == "on" and setfit.freeze == "head"


def test_with_pairs_on_zoos_own_split_trains_in_one_pass_on_everything() -> None:
    """Nothing for a validation pass to decide with pairs on: refit direct, and the step budget counts
    every example (the held-out ones train too); a given split stays held out; without pairs, refit on."""
    minilm, own = get_model("all-minilm-l6-v2"), "stratified seed=0 fraction=0.2"
    # 48 + 2 examples at batch 16: 4 steps per epoch with the 2 held-out ones in, 3 without
    direct, lines = resolve(FinetuneConfig(pairs="on", batch_size=16), minilm, _text_dataset(24, own))
    assert direct.refit == "direct" and direct.epochs == 20
    assert any(line.startswith("refit = direct: one pass on all 50 examples") for line in lines)
    assert any("(50 training examples, batch 16)" in line for line in lines)
    assert resolve(FinetuneConfig(pairs="on", probe_only=True), minilm, _text_dataset(24, own))[0].refit == "direct"
    plain = resolve(FinetuneConfig(pairs="off", batch_size=16), minilm, _text_dataset(24, own))[0]
    assert plain.refit == "on" and plain.epochs == 27
    assert resolve(FinetuneConfig(pairs="on"), minilm, _text_dataset(24))[0].refit == "off"  # a given split
    assert resolve(FinetuneConfig(pairs="on", refit="on"), minilm, _text_dataset(24, own))[0].refit == "on"
    image = Dataset("image-classification", "image", ["a", "b"], [Example("x.png", i % 2) for i in range(8)], [], "data", "given")
    assert resolve(FinetuneConfig(), get_model("efficientnet_lite0"), image)[0].pairs == "off"
    with pytest.raises(InputError, match="--pairs on trains a text encoder for classification; efficientnet_lite0"):
        resolve(FinetuneConfig(pairs="on"), get_model("efficientnet_lite0"), image)


def test_bad_pairs_values_are_refused() -> None:
    with pytest.raises(InputError, match="--pairs 'yes': expected one of auto, on, off"):
        FinetuneConfig(pairs="yes").check()
    with pytest.raises(InputError, match="--pairs on trains the encoder before the probe; it excludes --head-init random"):
        FinetuneConfig(pairs="on", head_init="random").check()


def test_setfit_recipe_runs_on_real_weights_and_records_the_stage(tmp_path: Path) -> None:
    """`--probe --pairs on` (SetFit): the encoder trains on pairs, the probe is fitted on its new features,
    and the run says so in its card; the encoder's weights moved, the head separates the training texts."""
    texts = {"pos": ["a wonderful, moving film", "brilliant acting and a clever plot", "I loved every minute",
                     "a delight from start to finish", "funny, warm and beautifully shot", "an excellent story"],
             "neg": ["a dull, boring mess", "terrible acting and a stupid plot", "I hated every minute",
                     "a waste of two hours", "tedious, ugly and badly shot", "an awful story"]}
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for label, rows in texts.items() for t in rows))
    result = finetune("all-minilm-l6-v2", data, tmp_path / "run", probe_only=True, pairs="on", quiet=True, refit="off",
                      val_fraction=0.34)
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["pairs"]["pairs"] == 2 * ITERATIONS * 8 and card["pairs"]["steps"] == 20
    assert card["pairs"]["last_loss"] < card["pairs"]["first_loss"]
    assert "pairs = on: given" in card["choices"]
    # no C search on features trained on these very labels: SetFit's fixed C, no out-of-fold accuracy
    assert card["probe"]["C"] == FIXED_C and card["probe"]["cv_accuracy"] is None
    assert result.best_metrics["accuracy"] == 1.0  # 4 held-out reviews, plainly worded


def test_one_direct_pass_gives_the_model_of_a_refit_without_its_first_pass(tmp_path: Path, capsys) -> None:
    """`--refit direct` (the default with --pairs on) trains what `--refit on` trains in its second pass, the
    same weights to the bit, without the first pass: the pair stage runs once. Compared on SetFit (`--probe
    --pairs on`), which a refit always runs again (fine-tuning is re-run only when the first pass selects it,
    and 2 held-out texts can select the probe). Through the command line, which says there are no
    validation metrics rather than printing an empty list."""
    from safetensors.torch import load_file

    from zoo_cli import main

    texts = {"pos": ["a wonderful, moving film", "brilliant acting and a clever plot", "I loved every minute",
                     "a delight from start to finish", "funny, warm and beautifully shot"],
             "neg": ["a dull, boring mess", "terrible acting and a stupid plot", "I hated every minute",
                     "a waste of two hours", "tedious, ugly and badly shot"]}
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for label, rows in texts.items() for t in rows))
    twice = finetune("all-minilm-l6-v2", data, tmp_path / "on", refit="on", probe_only=True, pairs="on", quiet=True)
    assert twice.best_metrics and len(twice.refit_history) == 1
    code = main(["finetune", "all-minilm-l6-v2", "--data", str(data), "--out", str(tmp_path / "direct"), "--probe",
                 "--pairs", "on", "--quiet"])
    assert code == 0 and "no validation split, so no validation metrics" in capsys.readouterr().out
    card = json.loads((tmp_path / "direct" / "card.json").read_text())
    assert card["hyperparameters"]["refit"] == "direct" and card["best_metrics"] == {} and card["best_epoch"] == 0
    assert card["data"]["val"] == {} and card["data"]["train"] == {"neg": 5, "pos": 5}
    assert card["pairs"]["pairs"] == 2 * ITERATIONS * 10  # the pair stage saw all ten texts, once
    stored = json.loads((tmp_path / "direct" / "run.json").read_text())["data"]
    assert stored["val_items"] == [] and stored["split"].startswith("none")
    once = load_file(str(tmp_path / "direct" / "model.safetensors"))
    refitted = load_file(str(tmp_path / "on" / "model.safetensors"))
    assert once.keys() == refitted.keys() and all(torch.equal(once[k], refitted[k]) for k in once)
    assert not (tmp_path / "direct" / "refit").exists()
    # with fine-tuning: the probe, then every epoch, none evaluated, the last one kept
    tuned = finetune("all-minilm-l6-v2", data, tmp_path / "tuned", pairs="on", epochs=2, batch_size=4, quiet=True)
    assert [row["epoch"] for row in tuned.history] == [0, 1, 2] and all(r["val_loss"] is None for r in tuned.history)
    assert tuned.best_epoch == 2 and tuned.best_metrics == {}
    tuned_weights = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    assert not all(torch.equal(tuned_weights[k], once[k]) for k in once)  # fine-tuning moved them
