"""torch Datasets and DataLoaders for fine-tuning: torchvision v2 transforms derived from the
entry's input spec (train: random resized crop + flip; eval: exactly the bundle's preprocessing)
and dynamic padding with the model's tokenizer for text."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset
from torch.utils.data.distributed import DistributedSampler

from zoo.data import Example
from zoo.preprocess import image_transform, open_image, tokenize
from zoo.schema import ImageInputSpec


def train_image_transform(spec: ImageInputSpec):
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.RandomResizedCrop(spec.crop, interpolation=InterpolationMode(spec.interpolation), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ])


class ImageExamples(TorchDataset):
    def __init__(self, examples: Sequence[Example], transform):
        self.examples, self.transform = list(examples), transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.examples[index]
        return self.transform(open_image(example.item)), example.label


class TextExamples(TorchDataset):
    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[str, int]:
        example = self.examples[index]
        return example.item, example.label


class TextCollate:
    """Tokenise a batch, padded to its longest text (dynamic padding)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[str, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        texts, labels = zip(*batch)
        return tokenize(self.tokenizer, texts), torch.tensor(labels)


def image_collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    images, labels = zip(*batch)
    return {"pixel_values": torch.stack(images)}, torch.tensor(labels)


def make_loader(examples: Sequence[Example], *, train: bool, spec, tokenizer: Any, batch_size: int, workers: int,
                seed: int, epoch: int, pin_memory: bool, distributed: bool) -> DataLoader:
    """A loader whose shuffling and augmentation depend only on (seed, epoch): a resumed run sees
    exactly the batches the uninterrupted run would have."""
    if tokenizer is None:
        dataset: TorchDataset = ImageExamples(examples, train_image_transform(spec) if train else image_transform(spec))
        collate = image_collate
    else:
        dataset, collate = TextExamples(examples), TextCollate(tokenizer)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    sampler = None
    if distributed and train:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate, pin_memory=pin_memory, generator=generator,
                      persistent_workers=False, drop_last=False)
