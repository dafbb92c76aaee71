"""Detection and segmentation outputs as users receive them, against values worked out by hand: the order,
the score cut, label names, nearest-neighbour mask resizing, class areas and the VOC colour map."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from serve.detection import detections
from serve.segmentation import class_areas, jsonable, mask_from_logits, mask_image, mask_png, voc_palette


def test_detections_best_first_cut_at_min_score_with_names() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 2, 3, 4], [5, 5, 6, 6], [7, 7, 9, 9]], dtype=np.float32)
    scores = np.array([0.3, 0.9, 0.5, 0.5], dtype=np.float32)
    labels = np.array([1, 2, 7, 1])
    found = detections(boxes, scores, labels, ["__background__", "cat", "dog"], min_score=0.5)
    assert found == [
        {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.8999999761581421, "index": 2, "label": "dog"},
        {"box": [5.0, 5.0, 6.0, 6.0], "score": 0.5, "index": 7, "label": "7"},  # ties keep the graph's order
        {"box": [7.0, 7.0, 9.0, 9.0], "score": 0.5, "index": 1, "label": "cat"},
    ]
    assert all(type(v) is float for d in found for v in d["box"]) and type(found[0]["index"]) is int
    assert detections(boxes, scores, labels, ["bg", "cat", "dog"], min_score=0.95) == []
    assert [d["index"] for d in detections(boxes, scores, labels, ["bg", "cat", "dog"], min_score=0.0)] == [2, 7, 1, 1]


def test_mask_is_the_argmax_resized_by_nearest_neighbour() -> None:
    logits = np.zeros((3, 2, 2), dtype=np.float32)
    logits[1, 0, 0] = logits[2, 0, 1] = logits[2, 1, 1] = 1.0  # class 0 at (1, 0)
    assert mask_from_logits(logits, (2, 2)).tolist() == [[1, 2], [0, 2]]
    resized = mask_from_logits(logits, (4, 6))  # (width, height): never a blended class id
    assert resized.shape == (6, 4) and resized.dtype == np.uint8
    assert resized.tolist() == [[1, 1, 2, 2]] * 3 + [[0, 0, 2, 2]] * 3


def test_class_areas_largest_first_with_fractions() -> None:
    mask = np.array([[0, 2, 2, 2], [0, 2, 5, 2]], dtype=np.uint8)
    assert class_areas(mask, ["bg", "cat", "dog"]) == [
        {"index": 2, "label": "dog", "pixels": 5, "fraction": 0.625},
        {"index": 0, "label": "bg", "pixels": 2, "fraction": 0.25},
        {"index": 5, "label": "5", "pixels": 1, "fraction": 0.125},
    ]


def test_voc_palette_is_pascal_vocs_colour_map() -> None:
    palette = voc_palette()
    colour = {i: tuple(palette[3 * i:3 * i + 3]) for i in range(256)}
    # The VOC development kit's table (labelcolormap.m): background, aeroplane, bicycle, bird, ..., person.
    assert colour[0] == (0, 0, 0) and colour[1] == (128, 0, 0) and colour[2] == (0, 128, 0)
    assert colour[3] == (128, 128, 0) and colour[4] == (0, 0, 128) and colour[7] == (128, 128, 128)
    assert colour[8] == (64, 0, 0) and colour[15] == (192, 128, 128) and colour[20] == (0, 64, 128)
    assert colour[255] == (224, 224, 192) and len(palette) == 768


def test_mask_png_holds_the_class_indices() -> None:
    mask = np.array([[0, 1, 2], [15, 255, 1]], dtype=np.uint8)
    image = mask_image(mask)
    assert image.mode == "P" and image.size == (3, 2)
    decoded = Image.open(io.BytesIO(mask_png(mask)))
    assert decoded.mode == "P" and np.asarray(decoded).tolist() == mask.tolist()
    assert decoded.getpalette()[3 * 15:3 * 15 + 3] == [192, 128, 128]
    encoded = jsonable({"mask": mask, "areas": []})
    assert set(encoded) == {"mask_png_base64", "areas"}
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded["mask_png_base64"])))).tolist() == mask.tolist()
    assert jsonable({"top_k": [1]}) == {"top_k": [1]}


def test_ties_keep_the_graphs_order_and_the_last_label_index_is_named_by_number() -> None:
    scores = np.random.default_rng(0).choice(np.array([0.5, 0.7, 0.9], dtype=np.float32), 40)  # many ties
    boxes = np.arange(160, dtype=np.float32).reshape(40, 4)
    found = detections(boxes, scores, np.ones(40, dtype=np.int64), ["bg", "cat"], min_score=0.0)
    assert [d["box"][0] / 4 for d in found] == sorted(range(40), key=lambda i: (-scores[i], i))
    assert detections(boxes[:1], scores[:1], np.array([2]), ["bg", "cat"], 0.0)[0]["label"] == "2"


def test_mask_resizing_to_a_non_integer_scale_never_blends() -> None:
    grid = np.array([[1, 2, 0], [0, 1, 2], [2, 0, 1]])
    logits = np.stack([(grid == c).astype(np.float32) for c in range(3)])
    # nearest neighbour, 3 -> 5 columns and 3 -> 7 rows: source index floor((i + 0.5) * 3 / n), no exact ties
    rows, columns = [0, 0, 1, 1, 1, 2, 2], [0, 0, 1, 2, 2]
    assert mask_from_logits(logits, (5, 7)).tolist() == [[int(grid[r, c]) for c in columns] for r in rows]


def test_class_areas_edge_cases() -> None:
    counts = np.random.default_rng(0).choice([3, 5, 7], 100)  # 100 classes, many of the same area
    mask = np.repeat(np.arange(100, dtype=np.uint8), counts)[None, :]
    assert [a["index"] for a in class_areas(mask, [f"c{i}" for i in range(100)])] == \
        sorted(range(100), key=lambda i: (-counts[i], i))
    assert class_areas(np.array([[3, 3]], dtype=np.uint8), ["a", "b", "c"]) == [
        {"index": 3, "label": "3", "pixels": 2, "fraction": 1.0}]


def test_a_mask_of_any_integer_dtype_encodes_its_indices() -> None:
    mask = np.array([[0, 1], [20, 255]], dtype=np.int64)
    assert np.asarray(Image.open(io.BytesIO(mask_png(mask)))).tolist() == mask.tolist()


def test_sigmoid_matches_the_logistic_function_and_never_overflows() -> None:
    import warnings

    from serve.activations import sigmoid

    logits = np.array([-30.0, -2.5, 0.0, 1.0, 30.0])
    assert np.allclose(sigmoid(logits), 1 / (1 + np.exp(-logits)), rtol=1e-12, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1 / (1 + exp(1000)) would warn of an overflow
        assert sigmoid(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]
