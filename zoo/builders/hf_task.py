"""Ready-made task models from `transformers` (a Hub repository's *ForSequenceClassification,
*ForTokenClassification, *ForQuestionAnswering, *ForImageClassification): `(input_ids, attention_mask)` or
`pixel_values` in, the task's logits out (question answering: start and end stacked as (batch, tokens, 2),
the layout of zoo's span head)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zoo.builders.hf_encoder import check_loading_info, quiet_transformers
from zoo.errors import BuildError
from zoo.schema import ModelEntry

AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "image-classification": "AutoModelForImageClassification",
}


class TaskModel(nn.Module):
    """A transformers task model with zoo's inputs and outputs."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.spans = task == "question-answering"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return torch.stack([output.start_logits, output.end_logits], dim=-1) if self.spans else output.logits


class ImageTaskModel(nn.Module):
    """A transformers image classifier: normalised pixels in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def build_hf_task(entry: ModelEntry, weights: Path | None) -> nn.Module:
    """Random init from the entry's config, or the verified files in `weights`' folder (its config.json,
    whose labels must be the entry's)."""
    import transformers
    from transformers import AutoConfig

    auto = getattr(transformers, AUTO_CLASSES[entry.task])
    if weights is None:
        config = dict(entry.builder_args["config"])
        model = auto.from_config(AutoConfig.for_model(config.pop("model_type"), **config), attn_implementation="eager")
    else:
        with quiet_transformers():
            model, info = auto.from_pretrained(str(weights.parent), use_safetensors=True, output_loading_info=True,
                                               local_files_only=True, attn_implementation="eager")
        check_loading_info(entry, info)
        if entry.task != "question-answering":
            published = [model.config.id2label[i] for i in range(model.config.num_labels)]
            if published != list(entry.output.labels):
                raise BuildError(f"{entry.id}: the labels of its config.json {published} are not the entry's "
                                 f"{list(entry.output.labels)}; fix the registry entry (zoo pin writes it from the files)")
    return ImageTaskModel(model.eval()) if entry.modality == "image" else TaskModel(model.eval(), entry.task)
