"""The model card shown by `zoo info`: the registry entry, readable, without the bulky parts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from zoo.lock import lock_path, pin_state
from zoo.schema import ModelEntry


def card_dict(entry: ModelEntry) -> dict[str, Any]:
    card = asdict(entry)
    card.pop("extra", None)
    card["output"].pop("labels")
    card["output"]["num_labels"] = len(entry.output.labels)
    if entry.reference:
        card["reference"] = {"producer": entry.reference.producer, "atol": entry.reference.atol,
                             "cases": [c.input for c in entry.reference.cases]}
    card["builder_args"].pop("config", None)
    card["pinned"] = pin_state(entry)
    return card


def card_lines(entry: ModelEntry) -> list[str]:
    spec = entry.input
    if spec.kind == "image":
        crop = f"center crop {spec.crop}" if spec.crop is not None else "no crop (any aspect ratio)"
        resize = f"resize to {spec.resize}x{spec.resize}" if spec.warp else f"resize {spec.resize}"
        pre = (f"{resize} ({spec.interpolation}) -> {crop}, "
               f"mean {[round(v, 4) for v in spec.mean]}, std {[round(v, 4) for v in spec.std]}")
    else:
        pre = f"tokenizer {spec.tokenizer}, max length {spec.max_length}"
    out = entry.output
    labels = f" ({out.label_set})" if out.label_set else f": {', '.join(out.labels[:8])}" + (" ..." if len(out.labels) > 8 else "")
    if out.kind == "logits":
        head = f"{len(out.labels)} classes{labels}"
    elif out.kind == "segmentation":
        head = f"per-pixel logits, {len(out.labels)} classes{labels}, at the input's resolution"
    elif out.kind == "detection":
        head = f"boxes, scores and labels per image, {len(out.labels) - 1} classes{labels} (label 0: background)"
    elif out.kind == "token-logits":
        head = f"label logits per token, {len(out.labels)} tags{labels}"
    elif out.kind == "span-logits":
        head = "answer start and end logits per token (extractive question answering)"
    else:
        head = f"{out.dim}-d embedding, {out.pooling} pooling" + (", L2-normalised" if out.normalize else "")
    lines = [
        f"{entry.id}: {entry.description}",
        f"  task          {entry.task} ({entry.modality})",
        f"  architecture  {entry.architecture} (builder {entry.builder})",
        f"  parameters    {entry.params:,}" + (f", {entry.gflops} GFLOPS" if entry.gflops else ""),
        f"  input         {pre}",
        f"  output        {head}",
        f"  licence       {entry.provenance.license}",
        f"  origin        {entry.provenance.origin}",
    ]
    if entry.provenance.paper:
        lines.append(f"  paper         {entry.provenance.paper}")
    lines += [f"  metric        {m.name} = {m.value} ({m.source})" for m in entry.metrics]
    lines += [f"  file          {f.name} [{f.role}] " + (f"sha256 {f.sha256}" if f.sha256 else
                                                         f"sha256 {f.sha256_prefix} (prefix)" if f.sha256_prefix else
                                                         "no digest from upstream") for f in entry.files]
    state = pin_state(entry)
    lines.append("  pinned        " + {
        "registry": "by the entry (full sha256 of every file)",
        "lock": f"by the lock {lock_path()} (full sha256 recorded on the first fetch)",
        "not yet": "not yet: the lock records every file's full sha256 on the first fetch"}[state])
    lines += [f"  source {i + 1}      {s.describe()}" for i, s in enumerate(entry.sources)]
    if entry.reference:
        lines.append(f"  reference     {len(entry.reference.cases)} case(s), atol {entry.reference.atol:g}, "
                     f"from {entry.reference.producer}")
    else:
        lines.append("  reference     none stored (zoo validate has nothing to compare; zoo export still checks against torch)")
    return lines
