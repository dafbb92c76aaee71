"""torch Datasets, collates and the DataLoader for fine-tuning (each task picks its dataset and collate:
zoo.tasks `batching`): torchvision v2 transforms derived from the entry's input spec (train: random
resized crop + flip; eval: exactly the bundle's preprocessing), the same jointly on image and mask for
segmentation, images at their own size with their boxes for detection, and dynamic padding with the
model's tokenizer for text (token classification: tags aligned to each word's first sub-word; question
answering: windows of question + context with the answer's token span)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from zoo.data import IGNORE_INDEX, Example
from zoo.preprocess import image_transform, open_image, tokenize
from zoo.schema import ImageInputSpec


# Training augmentations of image classifiers (torchvision v2), mildest first: none (the eval transform),
# light (a random crop of at least half the image, horizontal flip), trivial (light + TrivialAugmentWide),
# imagenet (torchvision's ImageNet recipe: crops down to 8 % of the image, flip).


def train_image_transform(spec: ImageInputSpec, augment: str = "light"):
    from torchvision.transforms import InterpolationMode, v2

    if augment == "none":
        return image_transform(spec)
    interpolation = InterpolationMode(spec.interpolation)
    scale = (0.08, 1.0) if augment == "imagenet" else (0.5, 1.0)
    extra = [v2.TrivialAugmentWide(interpolation=interpolation)] if augment == "trivial" else []
    return v2.Compose([
        v2.RandomResizedCrop(spec.crop, scale=scale, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
        *extra,
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


def segmentation_transform(spec: ImageInputSpec, train: bool):
    """Joint image + mask transform. Train: random rescale of the shorter side in [0.5, 2] x `resize`,
    a random `resize`-square crop (padding: black image, ignored mask), horizontal flip. Eval: the bundle's
    preprocessing (shorter side to `resize`, no crop); masks are always resized nearest-neighbour."""
    from torchvision import tv_tensors
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(spec.interpolation)
    if train:
        geometry = [v2.ToImage(),
                    v2.RandomResize(spec.resize // 2, spec.resize * 2, interpolation=interpolation, antialias=True),
                    v2.RandomCrop(spec.resize, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
                    v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(spec.resize, interpolation=interpolation, antialias=True), v2.ToImage()]
    return v2.Compose([
        *geometry,
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ])


class SegmentationExamples(TorchDataset):
    def __init__(self, examples: Sequence[Example], transform):
        self.examples, self.transform = list(examples), transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        from PIL import Image
        from torchvision import tv_tensors

        example = self.examples[index]
        with Image.open(example.mask) as mask:
            target = tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.uint8)))
        image, target = self.transform(open_image(example.item), target)
        return image, target


def segmentation_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Images of different sizes padded to the largest (zeros after normalisation; their mask is ignored)."""
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images = torch.zeros(len(batch), 3, height, width)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for index, (image, mask) in enumerate(batch):
        images[index, :, :image.shape[1], :image.shape[2]] = image
        masks[index, :mask.shape[0], :mask.shape[1]] = mask
    return {"pixel_values": images}, masks


def detection_transform(train: bool):
    """Images as floats in [0, 1] at their own size (the detector resizes and normalises inside);
    train: a horizontal flip, applied to the boxes too."""
    from torchvision.transforms import v2

    flip = [v2.RandomHorizontalFlip()] if train else []
    return v2.Compose([v2.ToImage(), *flip, v2.ToDtype(torch.float32, scale=True)])


class DetectionExamples(TorchDataset):
    def __init__(self, examples: Sequence[Example], transform):
        self.examples, self.transform = list(examples), transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        example = self.examples[index]
        image = open_image(example.item)
        boxes = tv_tensors.BoundingBoxes(torch.tensor([o[1:] for o in example.objects], dtype=torch.float32).reshape(-1, 4),
                                         format="XYXY", canvas_size=(image.height, image.width))
        image, boxes = self.transform(image, boxes)
        return image, {"boxes": boxes.as_subclass(torch.Tensor),
                       "labels": torch.tensor([o[0] for o in example.objects], dtype=torch.int64)}


def detection_collate(batch):
    """A list of CHW images (any sizes) and a list of {"boxes", "labels"} targets, as torchvision takes them."""
    images, targets = zip(*batch)
    return {"images": list(images)}, list(targets)


class TokenCollate:
    """Tokenise a batch of pre-split sentences (padded to the longest); each word's tag goes on its first
    sub-word token, every other position (continuations, special tokens, padding) gets IGNORE_TOKEN."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[Example]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        from zoo.heads import IGNORE_TOKEN

        encodings = self.tokenizer.encode_batch([list(e.words) for e in batch], is_pretokenized=True)
        labels = []
        for example, encoding in zip(batch, encodings):
            previous, row = None, []
            for word in encoding.word_ids:
                row.append(example.tags[word] if word is not None and word != previous else IGNORE_TOKEN)
                previous = word
            labels.append(row)
        return ({"input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.int64),
                 "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)},
                torch.tensor(labels, dtype=torch.int64))


def span_target(encoding: Any, start: int, text: str) -> tuple[int, int]:
    """The (start, end) token positions of an answer in one question + context window, or (0, 0) (the
    first, [CLS] token) when the window does not hold the whole answer, as Hugging Face's run_qa labels."""
    end = start + len(text)
    context = [i for i, sid in enumerate(encoding.sequence_ids) if sid == 1]
    if not context or start < encoding.offsets[context[0]][0] or end > encoding.offsets[context[-1]][1]:
        return 0, 0
    first = next(i for i in context if encoding.offsets[i][1] > start)
    last = next(i for i in reversed(context) if encoding.offsets[i][0] < end)
    return first, last


def span_features(examples: Sequence[Example], windows: Any) -> list[tuple[Any, tuple[int, int]]]:
    """Question-answering examples as windows (serve.qa.WindowTokenizer), each with its answer's token
    span (the first answer)."""
    return [(encoding, span_target(encoding, *example.answers[0]))
            for example in examples for encoding in windows.windows(example.question, example.item)]


class SpanCollate:
    def __init__(self, windows: Any):
        self.windows = windows

    def __call__(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        feeds = self.windows.pad([encoding for encoding, _ in batch])
        return ({name: torch.from_numpy(array) for name, array in feeds.items()},
                torch.tensor([target for _, target in batch], dtype=torch.int64))


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


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order: (seed, epoch) alone decide it."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochKeyed(TorchDataset):
    """A training dataset read by (epoch, index) keys: each example's random augmentation is drawn from a
    generator seeded by (seed, epoch, index) alone, so the batches do not depend on which worker process
    made them, on how many there are, or on whether they lived through earlier epochs (persistent
    workers); a resumed run sees what the uninterrupted run saw."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):  # the caller's generator state is left as it was
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)
            return self.dataset[index]


class EpochOrder(Sampler):
    """(epoch, index) keys in an order that depends on (seed, epoch) only; under DDP, this rank's share
    (DistributedSampler's split of the same permutation). `set_epoch` before each epoch."""

    def __init__(self, size: int, seed: int, distributed: bool):
        self.size, self.seed, self.epoch = size, seed, 0
        self.ranks = DistributedSampler(range(size), shuffle=True, seed=seed, drop_last=False) if distributed else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.ranks is not None:
            self.ranks.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ranks) if self.ranks is not None else self.size

    def __iter__(self):
        if self.ranks is not None:
            order = list(self.ranks)
        else:
            order = torch.randperm(self.size, generator=_epoch_generator(self.seed, self.epoch)).tolist()
        return iter([(self.epoch, index) for index in order])


class EpochLoader(DataLoader):
    """A training DataLoader made once per run, its worker processes kept between epochs
    (persistent_workers); `set_epoch` picks the epoch's order and augmentation."""

    def set_epoch(self, epoch: int) -> None:
        (self.batch_sampler if isinstance(self.batch_sampler, LengthGroupedBatches) else self.sampler).set_epoch(epoch)


def make_loader(dataset: Sequence[Any], collate: Callable, *, train: bool, batch_size: int, workers: int, seed: int,
                epoch: int, pin_memory: bool, distributed: bool) -> DataLoader:
    """Batches of `dataset` (a task's map-style dataset, zoo.tasks: `batching`) joined by `collate`, whose
    shuffling and augmentation depend only on (seed, epoch): a resumed run sees exactly the batches the
    uninterrupted run would have. `train` shuffles: an EpochLoader, made once and moved on with
    `set_epoch`, its workers persistent; without it, examples keep their order."""
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                          pin_memory=pin_memory, drop_last=False)
    keyed = EpochKeyed(dataset, seed)
    persistent = {"num_workers": workers, "persistent_workers": workers > 0, "collate_fn": collate, "pin_memory": pin_memory}
    if isinstance(dataset, TextExamples) and not distributed:  # batches of similar length: little padding to compute
        loader = EpochLoader(keyed, batch_sampler=LengthGroupedBatches([len(e.item) for e in dataset.examples],
                                                                       batch_size, seed), **persistent)
    else:
        loader = EpochLoader(keyed, batch_size=batch_size, sampler=EpochOrder(len(dataset), seed, distributed),
                             drop_last=False, **persistent)
    loader.set_epoch(epoch)
    return loader


class LengthGroupedBatches:
    """Training batches of texts of similar length, in random order (Hugging Face's group_by_length): a
    seeded shuffle, cut into windows of 16 batches, each window sorted by length and cut into batches,
    the batches shuffled. Each batch pads to its own longest text, so little of it is padding: an epoch
    of 200 drug reviews (5 to 256 tokens) took 15-18 s instead of 25-27 s with shuffled batches (28,592
    instead of 42,904 padded tokens; all-MiniLM-L6-v2, batch 32, 2 cores). Lengths are characters (no
    tokenising twice)."""

    WINDOW = 16

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        generator = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = self.WINDOW * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return iter([[(self.epoch, i) for i in batches[b]]
                     for b in torch.randperm(len(batches), generator=generator).tolist()])
