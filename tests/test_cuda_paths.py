"""The CUDA paths of fine-tuning and serving (issue 16), checked here without a GPU wherever the logic
runs on CPU: precision choice, box decoding under mixed precision, host synchronisations per step, data
workers, TF32 scoping, rank-0-only actions under DDP, attention kernels, and the CUDA provider's options
and missing-library report. DDP with gradual unfreezing is tests/test_finetune.py's two-process test;
what needs a GPU is benchmarks/gpu_check.py."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

import zoo
from serve.errors import ProviderError
from serve.providers import (CUDA, CPU, SessionConfig, cuda_failure_reason, cuda_libraries, cuda_provider_options,
                             cuda_providers, cuda_session_config, missing_libraries)
from zoo import trainer
from zoo.runtime import Runtime, auto_amp, cuda_math, default_workers

ROOT = Path(__file__).resolve().parents[1]


def test_auto_amp_is_bf16_only_where_the_gpu_computes_it_natively() -> None:
    assert auto_amp((9, 0)) == "bf16"  # H100 / H200
    assert auto_amp((8, 0)) == "bf16"  # A100
    assert auto_amp((7, 5)) == "fp16"  # T4: bf16 only emulated
    assert auto_amp((7, 0)) == "fp16"  # V100
    assert auto_amp(None) == "off"  # CPU


def _decode_dtypes(model, images, context) -> set[torch.dtype]:
    """The dtypes of the box deltas and the anchors/proposals entering torchvision's box decoding."""
    from torchvision.models.detection._utils import BoxCoder

    seen: set[torch.dtype] = set()
    original = BoxCoder.decode_single

    def spy(self, rel_codes, boxes):
        seen.update({rel_codes.dtype, boxes.dtype})
        return original(self, rel_codes, boxes)

    BoxCoder.decode_single = spy
    try:
        with torch.inference_mode(), context:
            model.detect(images)
    finally:
        BoxCoder.decode_single = original
    return seen


def test_detection_under_bf16_decodes_boxes_in_float32() -> None:
    model = zoo.build("fasterrcnn_mobilenet_v3_large_320_fpn", pretrained=False).eval()
    images = [torch.rand(3, 400, 600)]
    whole = _decode_dtypes(model, images, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.bfloat16 in whole  # what a whole-model autocast does (the bug this guards against)
    mixed = _decode_dtypes(model, images, model.mixed_precision("cpu", torch.bfloat16))
    assert mixed == {torch.float32}
    boxes = model.detect(images)[0]["boxes"]
    assert boxes.dtype == torch.float32 and model._backbone_amp is None  # restored after the context


class _HostReads(TorchFunctionMode):
    """Counts the tensor reads that make the host wait for the device. Not counted: torch.optim reading
    its step counters (`_get_value`), which live on the host by the optimizer's design (on CUDA too,
    unless fused or capturable), so reading them waits for nothing."""

    READS = {"item", "tolist", "__float__", "__bool__", "__int__", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            caller = sys._getframe(1).f_code
            if not (caller.co_name == "_get_value" and f"torch{os.sep}optim" in caller.co_filename):
                self.count += 1
        return func(*args, **(kwargs or {}))


def _images(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_a_training_step_reads_the_device_once_per_optimizer_step(tmp_path: Path, monkeypatch) -> None:
    """Not after every micro-batch: the loss and the finite flag stay on the device until the step."""
    counted: list[tuple[int, int]] = []
    original = trainer.Trainer.train_epoch

    def counting(self, model, optimizer, scheduler, scaler, epoch):
        batches = list(self.loader(True, epoch))  # data loading is not under test: materialised outside
        self.loader = lambda *args, **kwargs: batches
        with _HostReads() as reads:
            result = original(self, model, optimizer, scheduler, scaler, epoch)
        counted.append((reads.count, math.ceil(len(batches) / self.config.accumulate)))
        return result

    monkeypatch.setattr(trainer.Trainer, "train_epoch", counting)
    data = _images(tmp_path / "data", 10)  # 16 training images: 8 micro-batches of 2, 4 optimizer steps
    zoo.finetune("efficientnet_lite0", data, tmp_path / "run", epochs=1, batch_size=2, accumulate=2, lr=1e-3,
                 head_init="random", augment="none", refit="off", quiet=True, device="cpu")
    (reads, steps), = counted
    assert steps == 4
    assert reads == steps + 1  # one per optimizer step, one for the epoch's mean loss


def test_workers_default_to_none_on_cpu_and_to_the_cores_per_rank_on_cuda(monkeypatch) -> None:
    cpu = Runtime(torch.device("cpu"), None, 0, 1)
    cuda = Runtime(torch.device("cuda", 0), torch.bfloat16, 0, 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(cpu) == 0
    assert default_workers(cuda) == 15  # one core left to the training thread
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_workers(cuda) == 16  # at most 16
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(Runtime(torch.device("cuda", 1), torch.bfloat16, 1, 4)) == 3  # 16 cores / 4 ranks - 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_workers(cuda) == 0


def test_tf32_is_on_while_training_on_cuda_and_restored_after() -> None:
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    before, benchmark = flags(), torch.backends.cudnn.benchmark
    with cuda_math(Runtime(torch.device("cuda", 0), None, 0, 1)):
        assert flags() == (True, True) and torch.backends.cudnn.benchmark == benchmark
    assert flags() == before
    with cuda_math(Runtime(torch.device("cpu"), None, 0, 1)):
        assert flags() == before


def test_rank_zero_acts_alone_and_its_error_stops_every_rank(tmp_path: Path) -> None:
    """The run directory is prepared by rank 0 while the others wait; when rank 0 refuses (a folder that
    is not a run), every rank raises the same error instead of waiting for it forever."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import torch, torch.distributed as dist
        sys.path.insert(0, {str(ROOT)!r})
        from zoo.errors import InputError
        from zoo.runtime import Runtime, agree, on_main
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        runtime = Runtime(torch.device("cpu"), None, rank, 2)
        ran = []
        on_main(runtime, lambda: ran.append(rank))
        agreed = agree(runtime, rank == 0)  # rank 0 says stop, rank 1 would not: both stop
        def refuse():
            raise InputError("--out x exists and is not empty")
        try:
            on_main(runtime, refuse)
            outcome = "no error"
        except InputError as exc:
            outcome = str(exc)
        os.write(1, f"rank {{rank}} ran {{ran}} agreed {{agreed}} outcome {{outcome}}\\n".encode())  # one write per line
        dist.destroy_process_group()
    """))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                             "127.0.0.1", "--master-port", str(port), str(script)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank"))
    assert lines == ["rank 0 ran [0] agreed True outcome --out x exists and is not empty",
                     "rank 1 ran [] agreed True outcome --out x exists and is not empty"]


def test_text_models_train_with_sdpa_and_export_with_eager_attention() -> None:
    from zoo.builders.hf_encoder import set_attention

    model = zoo.build("all-minilm-l6-v2")
    assert model.encoder.config._attn_implementation == "eager"  # what the exporters trace
    ids = torch.randint(1000, 5000, (3, 24))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.inference_mode():
        eager = model(ids, mask)
        assert set_attention(model, "sdpa") and model.encoder.config._attn_implementation == "sdpa"
        fused = model(ids, mask)
    np.testing.assert_allclose(fused.numpy(), eager.numpy(), atol=1e-5)


def test_the_cuda_provider_gets_its_options_and_a_small_thread_pool() -> None:
    config = SessionConfig(cuda_device_id=1)
    assert cuda_provider_options(config) == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC",
                                             "arena_extend_strategy": "kSameAsRequested"}
    assert cuda_providers(config) == [(CUDA, cuda_provider_options(config)), CPU]
    session = cuda_session_config(SessionConfig())
    assert (session.intra_op_threads, session.inter_op_threads, session.allow_spinning) == (1, 1, False)
    assert cuda_session_config(SessionConfig(intra_op_threads=4)).intra_op_threads == 4  # an explicit choice stays
    with pytest.raises(ProviderError, match="cudnn_conv_algo_search 'FAST'"):
        SessionConfig(cudnn_conv_algo_search="FAST").check()


def test_a_missing_cuda_library_is_named_with_the_fix() -> None:
    assert cuda_libraries("13.0") == ["libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13",
                                      "libcurand.so.10", "libcufft.so.12", "libcudnn.so.9"]
    assert cuda_libraries("12.2")[1:3] == ["libcudart.so.12", "libcublas.so.12"]
    assert missing_libraries(["libc.so.6", "libzoo-no-such-library.so.1"]) == ["libzoo-no-such-library.so.1"]
    reason = cuda_failure_reason("12.2", missing=["libcudnn.so.9"])
    assert "cannot load libcudnn.so.9" in reason and "onnxruntime-gpu[cuda,cudnn]" in reason
    assert "no NVIDIA driver" in cuda_failure_reason("12.2", missing=["libcuda.so.1", "libcudnn.so.9"])


def test_persistent_workers_give_the_batches_of_a_fresh_or_resumed_run(tmp_path: Path) -> None:
    """One training loader per run, its workers kept between epochs: epoch 1's augmented batches equal
    those of a loader made for epoch 1 alone (a resumed run) and of one without worker processes. In a
    fresh interpreter: its loaders fork, and a test worker that has run OpenVINO (other files' tests; its
    oneTBB threads do not survive fork) died forking them, twice in full runs."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_cuda_paths import "
            f"persistent_worker_batches_agree as check; from pathlib import Path; check(Path({str(tmp_path)!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def persistent_worker_batches_agree(tmp_path: Path) -> None:
    from zoo.data import load_dataset
    from zoo.loaders import EpochLoader, ImageExamples, image_collate, make_loader, train_image_transform
    from zoo.registry import get_model

    spec = get_model("efficientnet_lite0").input
    dataset = load_dataset(_images(tmp_path / "data", 6), "image", 0.2, 0)

    def loader(workers: int, epoch: int):
        examples = ImageExamples(dataset.train, train_image_transform(spec, "light"))
        return make_loader(examples, image_collate, train=True, batch_size=4, workers=workers, seed=7, epoch=epoch,
                           pin_memory=False, distributed=False)

    def batches(made):
        return [(inputs["pixel_values"].clone(), labels.clone()) for inputs, labels in made]

    persistent = loader(2, 0)
    assert isinstance(persistent, EpochLoader) and persistent.persistent_workers
    first = batches(persistent)
    persistent.set_epoch(1)
    second = batches(persistent)
    for reference in (batches(loader(0, 1)), batches(loader(2, 1))):
        assert len(reference) == len(second)
        for (a, la), (b, lb) in zip(second, reference):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(first[0][0], second[0][0])  # a new epoch: another order and other crops
