"""Training data for every task, each loader giving a `Dataset` of `Example`s (zoo.data.dataset) with a
seeded split when the data has no validation split and a content fingerprint for the run's card. Every
problem is an InputError naming the file, line or class.

    classification   image folder, or CSV / JSONL of (text, label)       load_dataset
    segmentation     labels.txt + images/ + masks/                       load_segmentation
    detection        COCO JSON or Pascal VOC XML                          load_detection
    tokens           CoNLL or JSONL words + IOB2 tags (NER)               load_token_tags
    squad            SQuAD v1.1 JSON (extractive question answering)      load_squad
"""

from zoo.data.classification import load_dataset
from zoo.data.dataset import Dataset, Example, random_split, stratified_split
from zoo.data.detection import BACKGROUND, load_detection
from zoo.data.segmentation import IGNORE_INDEX, LABELS_FILE, load_segmentation
from zoo.data.squad import ANSWER_LABELS, load_squad
from zoo.data.tokens import load_token_tags

__all__ = ["ANSWER_LABELS", "BACKGROUND", "Dataset", "Example", "IGNORE_INDEX", "LABELS_FILE", "load_dataset",
           "load_detection", "load_segmentation", "load_squad", "load_token_tags", "random_split", "stratified_split"]
