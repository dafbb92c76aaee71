"""Text batches split by length (serve.lengths): the split is a partition of the batch, optimal for
its cost model (checked against every split of small batches), and the predictor's results do not
change when it runs a batch in several runs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import serve
from serve.lengths import length_runs
from zoo.reference import SENTENCES


def _cost(runs: list[np.ndarray], lengths: np.ndarray, run_cost: int) -> int:
    return sum(len(run) * int(lengths[run].max()) + run_cost for run in runs)


@pytest.mark.parametrize("seed", range(20))
def test_runs_partition_the_batch_at_least_cost(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 120, size=int(rng.integers(1, 10)))
    run_cost = int(rng.choice([0, 8, 32, 200]))
    runs = length_runs(lengths, run_cost)
    assert sorted(np.concatenate(runs).tolist()) == list(range(len(lengths)))
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(runs, runs[1:]))  # shortest first
    ordered = np.argsort(lengths, kind="stable")
    best = min(_cost([ordered[i:j] for i, j in zip((0, *cuts), (*cuts, len(lengths)))], lengths, run_cost)
               for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k))
    assert _cost(runs, lengths, run_cost) == best


def test_equal_lengths_make_one_run_and_mixed_ones_split() -> None:
    assert [run.tolist() for run in length_runs([7] * 5)] == [[0, 1, 2, 3, 4]]
    runs = length_runs([90, 3, 88, 4, 5, 91, 6, 2])
    assert [sorted(run.tolist()) for run in runs] == [[1, 3, 4, 6, 7], [0, 2, 5]]


def test_predictor_results_do_not_depend_on_the_split(bundles) -> None:
    predictor = serve.load(bundles["all-minilm-l6-v2"])
    texts = [" ".join([SENTENCES[i % len(SENTENCES)]] * (1 + i % 5)) for i in range(24)]
    feeds = predictor.preprocess(texts)
    assert len(length_runs(feeds["attention_mask"].sum(axis=1))) > 1
    padded_together = predictor.run(feeds)
    assert np.abs(np.stack(predictor.run_texts(texts)) - padded_together).max() <= 1e-5
    served = np.array([r["embedding"] for r in predictor.predict(texts)])
    assert np.abs(served - padded_together).max() <= 1e-5
