"""serve/predictor.py on small ONNX graphs written by hand (onnx.helper), against numpy: chunking and
padding of fixed batches, runs grouped by image shape and by text length, input checks, the graph
check, scores and top-k, variants. Seconds, no export: mutation testing runs these (issue 19)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import serve
from serve.errors import BundleError, InputError, LimitError
from serve.limits import Limits
from serve.files import sha256_file
from serve.manifest import parse_manifest
from serve.activations import softmax
from serve.loading import check_graph
from serve.predictor import Predictor, _batches
from serve.qa import question_and_context
from serve.providers import SessionChoice

WEIGHT = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5], [3.0, 0.0, 1.0]], dtype=np.float32)  # 3 channels -> 3 classes
BIAS = np.array([0.1, 0.0, -0.1], dtype=np.float32)
IMAGE_MANIFEST = {
    "bundle_format": "zoo-bundle", "format_version": 1, "model_id": "m", "task": "image-classification",
    "modality": "image", "model_file": "model.onnx", "opset": 18,
    "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}],
    "preprocessing": {"kind": "image", "resize": 8, "crop": 8, "interpolation": "bilinear",
                      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "postprocessing": {"kind": "classification", "labels": ["cat", "dog", "fox"]},
    "files": {"model.onnx": "0" * 64}, "source": {}, "producer": {},
}


def image_graph(batch: int | str = "batch", height: int | str = "height", width: int | str = "width",
                classes: int = 3) -> bytes:
    """logits = mean over height and width, times WEIGHT, plus BIAS."""
    nodes = [helper.make_node("ReduceMean", ["pixel_values", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "weight"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["logits"])]
    graph = helper.make_graph(
        nodes, "image", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
         numpy_helper.from_array(WEIGHT[:, :classes], "weight"), numpy_helper.from_array(BIAS[:classes], "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()


def oracle(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64).mean(axis=(2, 3)) @ WEIGHT.astype(np.float64) + BIAS


class Recording:
    """An InferenceSession that records the batch shapes it is given."""

    def __init__(self, model: bytes):
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.shapes: list[tuple[int, ...]] = []

    def run(self, names, feeds, options=None):
        self.shapes.append(next(iter(feeds.values())).shape)
        return self.session.run(names, feeds, options)

    def __getattr__(self, name):
        return getattr(self.session, name)


def predictor(manifest: dict | None = None, model: bytes | None = None, **kwargs) -> Predictor:
    document = manifest or IMAGE_MANIFEST
    session = Recording(model or image_graph())
    return Predictor(Path("."), parse_manifest(document), SessionChoice(session, "CPUExecutionProvider", "cpu"), **kwargs)


def with_(document: dict, **changes) -> dict:
    changed = copy.deepcopy(document)
    for dotted, value in changes.items():
        node = changed
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return changed


def pixels(batch: int, height: int = 4, width: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, height, width)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# run: batches, fixed batches, chunks


def test_run_matches_numpy() -> None:
    x = pixels(5)
    np.testing.assert_allclose(predictor().run({"pixel_values": x}), oracle(x), atol=1e-5)


def test_a_fixed_batch_runs_in_chunks_the_last_padded_with_its_last_row() -> None:
    fixed = with_(IMAGE_MANIFEST, inputs=[{"name": "pixel_values", "dtype": "float32", "shape": [2, 3, 4, 4]}],
                  outputs=[{"name": "logits", "dtype": "float32", "shape": [2, 3]}])
    p = predictor(fixed, image_graph(2, 4, 4))
    assert p.fixed_batch == 2
    x = pixels(5)
    np.testing.assert_allclose(p.run({"pixel_values": x}), oracle(x), atol=1e-5)
    assert p.session.shapes == [(2, 3, 4, 4)] * 3  # 2 + 2 + (1 padded to 2)
    one = pixels(1, seed=3)
    np.testing.assert_allclose(p.run({"pixel_values": one}), oracle(one), atol=1e-5)  # padded up, cut back


@pytest.mark.parametrize("rows", [4, 5])  # a last chunk of 1 row padded by 2, of 2 rows padded by 1
def test_a_short_last_chunk_is_filled_with_copies_of_its_last_row(rows: int) -> None:
    fixed = with_(IMAGE_MANIFEST, inputs=[{"name": "pixel_values", "dtype": "float32", "shape": [3, 3, 4, 4]}],
                  outputs=[{"name": "logits", "dtype": "float32", "shape": [3, 3]}])
    p = predictor(fixed, image_graph(3, 4, 4))
    fed = []
    run = p.session.run
    p.session.run = lambda names, feeds, options=None: fed.append(feeds["pixel_values"]) or run(names, feeds, options)
    x = pixels(rows)
    np.testing.assert_allclose(p.run({"pixel_values": x}), oracle(x), atol=1e-5)
    assert [f.shape for f in fed] == [(3, 3, 4, 4), (3, 3, 4, 4)]
    np.testing.assert_array_equal(fed[1], np.concatenate([x[3:], np.repeat(x[-1:], 6 - rows, axis=0)]))


def test_chunk_bounds_each_run_and_is_skipped_when_the_batch_fits() -> None:
    p = predictor()
    x = pixels(7)
    np.testing.assert_allclose(p.run({"pixel_values": x}, chunk=3), oracle(x), atol=1e-5)
    assert [s[0] for s in p.session.shapes] == [3, 3, 1]
    p.run({"pixel_values": x[:3]}, chunk=3)
    assert p.session.shapes[-1][0] == 3 and len(p.session.shapes) == 4


def test_images_of_one_shape_share_a_run_in_input_order() -> None:
    p = predictor()
    images = [pixels(1, 4, 4, 0)[0], pixels(1, 6, 2, 1)[0], pixels(1, 4, 4, 2)[0]]
    rows = p.run_images(images)
    for image, row in zip(images, rows):
        np.testing.assert_allclose(row, oracle(image[None])[0], atol=1e-5)
    assert sorted(s[0] for s in p.session.shapes) == [1, 2] and len(p.session.shapes) == 2


def test_io_binding_gives_the_same_outputs() -> None:
    x = pixels(3)
    bound = predictor(io_binding="on")
    assert bound.io_binding
    np.testing.assert_allclose(bound.run({"pixel_values": x}), oracle(x), atol=1e-5)
    assert not predictor().io_binding  # "auto" binds on CUDA only


def test_warm_up_runs_the_largest_batch() -> None:
    p = predictor()
    p.warm_up(6)
    assert p.session.shapes == [(6, 3, 8, 8)]  # a named height/width: the square the bundle resizes to


# ---------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("feeds, message", [
    ({}, "missing input(s) ['pixel_values']; this model takes ['pixel_values']"),
    ({"pixel_values": [[1.0]]}, "input pixel_values: expected a numpy array, found list"),
    ({"pixel_values": np.zeros((1, 3, 4, 4), np.float64)}, "input pixel_values: dtype float64, expected float32 array"),
    ({"pixel_values": np.zeros((3, 4, 4), np.float32)}, "input pixel_values: 3 dimensions (3, 4, 4), expected"),
    ({"pixel_values": np.zeros((1, 4, 4, 4), np.float32)}, "input pixel_values: size 4 on axis 1, expected"),
    ({"pixel_values": np.zeros((0, 3, 4, 4), np.float32)}, "input pixel_values: empty batch"),
])
def test_inputs_the_model_cannot_take_are_refused_by_name(feeds, message) -> None:
    with pytest.raises(InputError) as error:
        predictor().run(feeds)
    assert str(error.value).startswith(message)


def test_a_fixed_batch_takes_any_batch_but_no_other_fixed_size() -> None:
    fixed = with_(IMAGE_MANIFEST, inputs=[{"name": "pixel_values", "dtype": "float32", "shape": [2, 3, 4, 4]}],
                  outputs=[{"name": "logits", "dtype": "float32", "shape": [2, 3]}])
    p = predictor(fixed, image_graph(2, 4, 4))
    assert p.run({"pixel_values": pixels(3)}).shape == (3, 3)
    with pytest.raises(InputError, match="size 5 on axis 2"):
        p.run({"pixel_values": pixels(3, 5, 4)})


def test_predict_arguments() -> None:
    p = predictor()
    for kwargs, message in (({"top_k": 0}, "top_k must be at least 1, got 0"),
                            ({"batch_size": 0}, "batch_size must be at least 1, got 0")):
        with pytest.raises(InputError, match=message):
            p.predict([np.zeros((8, 8, 3), np.uint8)], **kwargs)
    with pytest.raises(InputError, match="no inputs given"):
        p.predict([])
    with pytest.raises(InputError, match="no inputs given"):
        p.preprocess([])


# ---------------------------------------------------------------------------------------------
# Scores


def test_softmax_by_hand() -> None:
    row = np.array([1.0, 2.0, 3.0])
    total = math.exp(1) + math.exp(2) + math.exp(3)
    np.testing.assert_allclose(softmax(row), [math.exp(1) / total, math.exp(2) / total, math.exp(3) / total])
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])  # shifted: no overflow
    # each row shifted by its own maximum: rows of very different scales both come out right
    e, f = math.exp(-1.0), math.exp(-2.0)
    np.testing.assert_allclose(softmax(np.array([[1000.0, 999.0], [-1000.0, -998.0]])),
                               [[1 / (1 + e), e / (1 + e)], [f / (1 + f), 1 / (1 + f)]])  # sums differ per row


def test_top_k_scores_and_labels() -> None:
    p = predictor()
    result = p.postprocess(np.array([0.0, 2.0, 1.0], np.float32), top_k=2)
    total = 1 + math.exp(2) + math.exp(1)
    assert [(r["index"], r["label"]) for r in result["top_k"]] == [(1, "dog"), (2, "fox")]
    assert result["top_k"][0]["score"] == pytest.approx(math.exp(2) / total)
    assert result["top_k"][1]["score"] == pytest.approx(math.exp(1) / total)
    ties = p.postprocess(np.array([1.0, 1.0, 1.0], np.float32), top_k=5)["top_k"]  # stable: index order
    assert [r["index"] for r in ties] == [0, 1, 2] and all(r["score"] == pytest.approx(1 / 3) for r in ties)
    short = predictor(with_(IMAGE_MANIFEST, postprocessing__labels=["cat"]))
    assert [r["label"] for r in short.postprocess(np.array([0.0, 2.0, 1.0]), top_k=3)["top_k"]] == ["1", "2", "cat"]


def test_sigmoid_head_scores_the_positive_label() -> None:
    binary = with_(IMAGE_MANIFEST, outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 1]}],
                   postprocessing={"kind": "classification", "labels": ["negative", "positive"], "activation": "sigmoid"})
    p = predictor(binary, image_graph(classes=1))
    positive = 1 / (1 + math.exp(-0.8))
    result = p.postprocess(np.array([0.8], np.float32), top_k=2)["top_k"]
    assert [(r["label"], r["score"]) for r in result] == [("positive", pytest.approx(positive)),
                                                         ("negative", pytest.approx(1 - positive))]
    assert p.postprocess(np.array([-0.8], np.float32), top_k=1)["top_k"][0]["label"] == "negative"


def test_embeddings_come_back_as_floats() -> None:
    embedding = with_(IMAGE_MANIFEST, task="feature-extraction", postprocessing={"kind": "embedding", "dim": 3})
    result = predictor(embedding).postprocess(np.array([0.5, -1.0, 2.0], np.float32), top_k=1)
    assert result == {"embedding": [0.5, -1.0, 2.0]} and all(type(v) is float for v in result["embedding"])


def test_predict_end_to_end_on_arrays() -> None:
    p = predictor()
    image = np.full((8, 8, 3), 255, np.uint8)  # white: (1 - 0.5) / 0.5 = 1 in every channel
    (result,) = p.predict(image, top_k=1)
    expected = oracle(np.ones((1, 3, 8, 8), np.float32))[0]
    assert result["top_k"][0]["index"] == int(np.argmax(expected))
    assert result["top_k"][0]["score"] == pytest.approx(float(softmax(expected).max()), rel=1e-5)
    results = p.predict([image] * 5, batch_size=2)
    assert len(results) == 5 and [s[0] for s in p.session.shapes[1:]] == [2, 2, 1]


def test_batches() -> None:
    assert [list(b) for b in _batches([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(_batches([], 3)) == []


# ---------------------------------------------------------------------------------------------
# The graph check and variants


def session(model: bytes):
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_the_graph_must_be_the_manifests() -> None:
    manifest = parse_manifest(IMAGE_MANIFEST)
    check_graph(manifest, session(image_graph()), "model.onnx")  # agrees
    renamed = with_(IMAGE_MANIFEST, outputs=[{"name": "scores", "dtype": "float32", "shape": ["batch", 3]}])
    with pytest.raises(BundleError, match=r"outputs: 'scores' is not one of the outputs of model.onnx \(logits\)"):
        check_graph(parse_manifest(renamed), session(image_graph()), "model.onnx")
    wrong_type = with_(IMAGE_MANIFEST, inputs=[{"name": "pixel_values", "dtype": "float16", "shape": ["batch", 3, "h", "w"]}])
    with pytest.raises(BundleError, match="pixel_values is float16 .* but float32"):
        check_graph(parse_manifest(wrong_type), session(image_graph()), "model.onnx")
    wrong_size = with_(IMAGE_MANIFEST, outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 4]}])
    with pytest.raises(BundleError, match="logits is float32"):
        check_graph(parse_manifest(wrong_size), session(image_graph()), "model.onnx")
    wrong_rank = with_(IMAGE_MANIFEST, outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 3, 1]}])
    with pytest.raises(BundleError, match="re-export the bundle"):
        check_graph(parse_manifest(wrong_rank), session(image_graph()), "model.onnx")
    two_inputs = onnx.load_from_string(image_graph())
    two_inputs.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    with pytest.raises(BundleError, match="model.onnx also takes extra, which the manifest does not describe"):
        check_graph(manifest, session(two_inputs.SerializeToString()), "model.onnx")


def bundle(directory: Path, variants: dict | None = None) -> Path:
    directory.mkdir()
    (directory / "model.onnx").write_bytes(image_graph())
    document = with_(IMAGE_MANIFEST, files={"model.onnx": sha256_file(directory / "model.onnx")})
    for name, spec in (variants or {}).items():
        (directory / spec["file"]).write_bytes(image_graph())
        document["files"][spec["file"]] = sha256_file(directory / spec["file"])
    if variants:
        document["variants"] = variants
    (directory / "manifest.json").write_text(json.dumps(document))
    return directory


def test_load_picks_the_variant_asked_for_and_refuses_a_missing_one(tmp_path: Path) -> None:
    plain = bundle(tmp_path / "plain")
    loaded = serve.load(plain)
    assert loaded.variant == "fp32" and "variant fp32" in loaded.provider_line
    with pytest.raises(BundleError, match="has no 'int8' variant; it has: fp32$"):
        serve.load(plain, variant="int8")
    quantized = bundle(tmp_path / "quantized", {"int8": {"file": "model.int8.onnx"}})
    assert serve.load(quantized, variant="int8").variant == "int8"
    assert serve.load(quantized).variant == "fp32"  # auto: fp32 on CPU
    (quantized / "model.int8.onnx").write_bytes(image_graph(classes=2))  # changed after export
    with pytest.raises(BundleError, match="model.int8.onnx"):
        serve.load(quantized, variant="int8")


def test_question_answering_inputs() -> None:
    assert question_and_context({"question": "Who?", "context": "Ada."}) == ("Who?", "Ada.")
    for item in ("Who?", {"question": "Who?"}, {"question": 1, "context": "x"}):
        with pytest.raises(InputError, match='expected {"question": "...", "context": "..."}'):
            question_and_context(item)
    with pytest.raises(InputError, match="must not be empty"):
        question_and_context({"question": " ", "context": "x"})


# ---------------------------------------------------------------------------------------------
# text: token classification and question answering, on a WordPiece tokenizer and logit tables by hand

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "ada", "lov", "##elace", "lives", "in", "london", ".", "who", "?"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCE = "Ada Lovelace lives in London."  # Ada 0-3, Lovelace 4-12 (lov + ##elace), London 22-28


def wordpiece_tokenizer(path: Path) -> Path:
    """A BERT-style tokenizer over VOCAB: lower-casing, punctuation split, [CLS] A [SEP] (B [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))
    return path


def table_graph(table: np.ndarray, output: str) -> bytes:
    """output[b, t] = table[input_ids[b, t]]: one row of logits per token id (attention_mask unused)."""
    width = table.shape[1]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], [output], axis=0)], "table",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence", width])],
        [numpy_helper.from_array(table.astype(np.float32), "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()


def text_bundle(directory: Path, table: np.ndarray, output: str, postprocessing: dict, max_length: int = 32) -> Path:
    directory.mkdir()
    wordpiece_tokenizer(directory / "tokenizer.json")
    (directory / "model.onnx").write_bytes(table_graph(table, output))
    text_input = {"dtype": "int64", "shape": ["batch", "sequence"]}
    document = {
        "bundle_format": "zoo-bundle", "format_version": 1, "model_id": "t", "task": postprocessing["kind"],
        "modality": "text", "model_file": "model.onnx", "opset": 18,
        "inputs": [{"name": "input_ids", **text_input}, {"name": "attention_mask", **text_input}],
        "outputs": [{"name": output, "dtype": "float32", "shape": ["batch", "sequence", table.shape[1]]}],
        "preprocessing": {"kind": "text", "tokenizer": "tokenizer.json", "max_length": max_length,
                          "pad_token": "[PAD]", "pad_id": 0},
        "postprocessing": postprocessing, "source": {}, "producer": {},
        "files": {name: sha256_file(directory / name) for name in ("model.onnx", "tokenizer.json")}}
    (directory / "manifest.json").write_text(json.dumps(document))
    return directory


def _p(top: float, rest: list[float]) -> float:
    """The softmax probability of the logit `top` among `top` and `rest`, by hand."""
    return math.exp(top) / (math.exp(top) + sum(math.exp(v) for v in rest))


def test_entities_by_first_and_simple_aggregation_against_hand_worked_values(tmp_path: Path) -> None:
    table = np.zeros((len(VOCAB), len(TAGS)))
    table[VOCAB.index("ada")] = [0, 3, 0, 0, 0]  # B-PER
    table[VOCAB.index("lov")] = [0, 0, 2, 0, 0]  # I-PER
    table[VOCAB.index("##elace")] = [1, 0, 0, 0, 0]  # O: the word's continuation disagrees
    table[VOCAB.index("london")] = [0, 0, 0, 4, 0]  # B-LOC
    for token in ("lives", "in", "."):
        table[VOCAB.index(token)] = [2, 0, 0, 0, 0]
    tagger = serve.load(text_bundle(tmp_path / "ner", table, "logits",
                                    {"kind": "token-classification", "labels": TAGS, "aggregation": "first"}))
    ada, lov, london = _p(3, [0] * 4), _p(2, [0] * 4), _p(4, [0] * 4)
    # "first" (the bundle's): a word takes its first sub-word's tag, so "Lovelace" is I-PER as a whole
    first = tagger.predict([SENTENCE])[0]["entities"]
    assert [(e["entity"], e["start"], e["end"], e["text"]) for e in first] == [
        ("PER", 0, 12, "Ada Lovelace"), ("LOC", 22, 28, "London")]
    assert [e["score"] for e in first] == pytest.approx([(ada + lov) / 2, london], abs=1e-6)
    # "simple": every token its own tag, so ##elace (O) ends the person after "Lov"
    simple = tagger.predict([SENTENCE], aggregation="simple")[0]["entities"]
    assert [(e["entity"], e["start"], e["end"], e["text"]) for e in simple] == [
        ("PER", 0, 7, "Ada Lov"), ("LOC", 22, 28, "London")]
    assert [e["score"] for e in simple] == pytest.approx([(ada + lov) / 2, london], abs=1e-6)
    with pytest.raises(InputError, match="aggregation 'max': expected one of first, simple"):
        tagger.predict([SENTENCE], aggregation="max")
    # two texts of different lengths in one call: each keeps its own tokens and offsets, and is named
    both = tagger.predict(["London.", SENTENCE])
    assert [e["text"] for e in both[0]["entities"]] == ["London"] and both[1]["entities"] == first
    assert [r["input"] for r in both] == ["London.", SENTENCE]
    tagger.session = Recording(table_graph(table, "logits"))
    tagger.warm_up(2)
    assert tagger.session.shapes == [(2, 32)]  # a dynamic length warms up at the tokenizer's max_length


def test_answers_are_the_best_context_span_over_every_window(tmp_path: Path) -> None:
    """Windows of 10 tokens (question, 5 context tokens, 3 specials; stride 2): "Ada" scores in the first
    window, "London" in the second; the question's own token "who" has the largest logits of all and is
    never an answer."""
    table = np.zeros((len(VOCAB), 2))  # (start, end) logits per token id
    table[VOCAB.index("ada")] = [4, 2.5]
    table[VOCAB.index("london")] = [3, 4]
    table[VOCAB.index("who")] = [9, 9]
    reader = serve.load(text_bundle(tmp_path / "qa", table, "span_logits",
                                    {"kind": "question-answering", "stride": 2, "max_answer_tokens": 30},
                                    max_length=10))
    question = {"question": "Who?", "context": SENTENCE}
    # window 1: ada lov ##elace lives in -> "Ada", P = softmax(4; 0 x4) * softmax(2.5; 0 x4)
    # window 2: lives in london .        -> "London", P = softmax(3; 0 x3) * softmax(4; 0 x3), the larger
    in_first, in_second = _p(4, [0] * 4) * _p(2.5, [0] * 4), _p(3, [0] * 3) * _p(4, [0] * 3)
    assert in_second > in_first
    result = reader.predict([question])[0]
    assert (result["input"], result["answer"], result["start"], result["end"]) == ("Who?", "London", 22, 28)
    assert result["score"] == pytest.approx(in_second, abs=1e-6)
    # one window holding the whole context (max_length 32): the span from "Ada" to "London" is the best
    # pair of all when it may be 6 tokens long, and over the limit of a 3-token answer
    whole = np.array([4, 0, 0, 0, 0, 3, 0]), np.array([2.5, 0, 0, 0, 0, 4, 0])  # ada lov ##elace lives in london .
    p_start, p_end = (np.exp(v) / np.exp(v).sum() for v in whole)
    for limit, expected, score in ((30, ("Ada Lovelace lives in London", 0, 28), p_start[0] * p_end[5]),
                                   (3, ("London", 22, 28), p_start[5] * p_end[5])):
        wide = serve.load(text_bundle(tmp_path / f"qa{limit}", table, "span_logits",
                                      {"kind": "question-answering", "stride": 8, "max_answer_tokens": limit}))
        result = wide.predict([question, {"question": "Who?", "context": "London."}])
        assert (result[0]["answer"], result[0]["start"], result[0]["end"]) == expected, limit
        assert result[0]["score"] == pytest.approx(score, abs=1e-6)
        assert result[1]["answer"] == "London" and result[1]["score"] == pytest.approx(
            _p(3, [0]) * _p(4, [0]), abs=1e-6)  # its own windows: london .


def test_auto_variant_takes_fp16_only_on_a_working_cuda_session(tmp_path: Path, monkeypatch) -> None:
    """serve.load's variant choice, with onnxruntime-gpu "installed" (cuda_listed) and every session on
    CPU: auto tries fp16, sees CUDA unusable and falls back to fp32; device cpu never tries; an explicit
    fp16 is kept. Each session gets the config, the file's digest and the float16 flag of its variant."""
    import serve.loading as loading

    fp16 = bundle(tmp_path / "b", {"fp16": {"file": "model.fp16.onnx"}})
    digests = json.loads((fp16 / "manifest.json").read_text())["files"]
    calls = []
    real = loading.create_session

    def recording(path, config, sha256, float16=False):
        calls.append((Path(path).name, config.device, config.intra_op_threads, sha256, float16))
        return real(path, config, sha256, float16=float16)

    monkeypatch.setattr(loading, "create_session", recording)
    monkeypatch.setattr(loading, "cuda_listed", lambda: True)
    loaded = serve.load(fp16, threads=2)
    assert loaded.variant == "fp32" and "threads 2/default" in loaded.provider_line
    assert calls == [("model.fp16.onnx", "auto", 2, digests["model.fp16.onnx"], True),
                     ("model.onnx", "auto", 2, digests["model.onnx"], False)]
    calls.clear()
    assert serve.load(fp16, device="cpu").variant == "fp32"
    assert calls == [("model.onnx", "cpu", None, digests["model.onnx"], False)]
    calls.clear()
    assert serve.load(fp16, variant="fp16").variant == "fp16"  # asked for: no fallback
    assert calls == [("model.fp16.onnx", "auto", None, digests["model.fp16.onnx"], True)]
    calls.clear()
    monkeypatch.setattr(loading, "cuda_listed", lambda: False)
    assert serve.load(fp16).variant == "fp32" and [c[0] for c in calls] == ["model.onnx"]


def test_verify_false_skips_the_digest_check_only(tmp_path: Path) -> None:
    plain = bundle(tmp_path / "b")
    document = json.loads((plain / "manifest.json").read_text())
    document["files"]["model.onnx"] = "0" * 64  # the manifest no longer matches the file
    (plain / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(BundleError, match="model.onnx"):
        serve.load(plain)
    x = pixels(2)
    np.testing.assert_allclose(serve.load(plain, verify=False).run({"pixel_values": x}), oracle(x), atol=1e-5)


def test_detections_postprocess_against_hand_worked_lists() -> None:
    document = with_(IMAGE_MANIFEST, postprocessing={"kind": "detection", "labels": ["__background__", "cat", "dog"],
                                                     "score_threshold": 0.5})
    detector = predictor(document)
    row = (np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], dtype=np.float32),
           np.array([0.9, 0.3, 0.6], dtype=np.float32), np.array([1, 2, 1]))
    cat_a = {"box": [0.0, 0.0, 10.0, 10.0], "score": pytest.approx(0.9), "index": 1, "label": "cat"}
    cat_b = {"box": [1.0, 1.0, 2.0, 2.0], "score": pytest.approx(0.6), "index": 1, "label": "cat"}
    dog = {"box": [5.0, 5.0, 20.0, 20.0], "score": pytest.approx(0.3), "index": 2, "label": "dog"}
    # the bundle's threshold by default; top_k does not apply to detections
    assert detector.postprocess(row, top_k=1, size=(640, 480)) == {"size": [640, 480], "detections": [cat_a, cat_b]}
    assert detector.postprocess(row, top_k=1) == {"size": None, "detections": [cat_a, cat_b]}
    assert detector.postprocess(row, 5, min_score=0.0)["detections"] == [cat_a, cat_b, dog]
    assert detector.postprocess(row, 5, min_score=0.3)["detections"] == [cat_a, cat_b, dog]  # at least: inclusive
    assert detector.postprocess(row, 5, min_score=1.0)["detections"] == []  # the bounds themselves are valid
    for bad in (-0.01, 1.01):
        with pytest.raises(InputError, match=f"min_score {bad}: expected a score between 0 and 1"):
            detector.postprocess(row, 5, min_score=bad)
    unthresholded = predictor(with_(document, postprocessing__score_threshold=None))
    assert unthresholded.postprocess(row, 5)["detections"] == [cat_a, cat_b, dog]  # none in the bundle: all


def test_segmentation_postprocess_against_a_hand_worked_mask() -> None:
    document = with_(IMAGE_MANIFEST, postprocessing={"kind": "segmentation", "labels": ["background", "road", "sky"]})
    segmenter = predictor(document)
    logits = np.zeros((3, 2, 4), dtype=np.float32)  # 3 classes, 2 rows, 4 columns
    logits[2, :, :3] = 1.0  # sky on the left three columns
    logits[1, :, 3] = 1.0  # road on the last one
    expected = np.array([[2, 2, 2, 1], [2, 2, 2, 1]], dtype=np.uint8)
    result = segmenter.postprocess(logits, top_k=5)
    assert result["size"] == [4, 2] and result["mask"].dtype == np.uint8
    np.testing.assert_array_equal(result["mask"], expected)
    assert result["classes"] == [{"index": 2, "label": "sky", "pixels": 6, "fraction": 0.75},
                                 {"index": 1, "label": "road", "pixels": 2, "fraction": 0.25}]
    assert segmenter.postprocess(logits, top_k=1)["classes"] == result["classes"][:1]
    wide = segmenter.postprocess(logits, top_k=5, size=(8, 1))  # the image's own size: nearest neighbour
    assert wide["size"] == [8, 1]
    np.testing.assert_array_equal(wide["mask"], [[2, 2, 2, 2, 2, 2, 1, 1]])
    assert [(c["label"], c["pixels"]) for c in wide["classes"]] == [("sky", 6), ("road", 2)]


def test_token_inputs_the_model_cannot_take_are_refused_by_name(tmp_path: Path) -> None:
    """KServe-style raw feeds to a text bundle: at most max_length tokens, ids inside the vocabulary
    (13 ids here), every input the shape of input_ids, a mask of 0 and 1. The bounds themselves pass."""
    table = np.zeros((len(VOCAB), len(TAGS)))
    tagger = serve.load(text_bundle(tmp_path / "ner", table, "logits",
                                    {"kind": "token-classification", "labels": TAGS}, max_length=8))

    def feeds(ids, mask=None):
        ids = np.array(ids, dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else np.array(mask, dtype=np.int64)}

    assert tagger.run(feeds([[0, 12] + [1] * 6])).shape == (1, 8, len(TAGS))  # 8 tokens, ids 0 and 12: fine
    assert tagger.run(feeds([[2, 3]], [[1, 0]])).shape == (1, 2, len(TAGS))
    cases = [(feeds([[1] * 9]), "input input_ids: sequences of 9 tokens; this model takes at most 8"),
             (feeds([[2, 13]]), r"input input_ids: ids from 2 to 13; the vocabulary has ids 0..12"),
             (feeds([[-1, 2]]), r"input input_ids: ids from -1 to 2; the vocabulary has ids 0..12"),
             (feeds([[2, 3, 4]], [[1, 1]]), r"input attention_mask: shape \[1, 2\] differs from input_ids' \[1, 3\]"),
             (feeds([[2, 3]], [[1, 2]]), r"input attention_mask: expected 0 \(padding\) and 1 \(token\) only")]
    for bad, message in cases:
        with pytest.raises(InputError, match=f"^{message}$"):
            tagger.run(bad)


def test_a_fixed_length_text_bundle_pads_every_text_to_its_length(tmp_path: Path) -> None:
    table = np.zeros((len(VOCAB), len(TAGS)))
    table[VOCAB.index("london")] = [0, 0, 0, 4, 0]
    directory = text_bundle(tmp_path / "fixed", table, "logits", {"kind": "token-classification", "labels": TAGS})
    document = json.loads((directory / "manifest.json").read_text())
    for spec in document["inputs"] + document["outputs"]:
        spec["shape"][1] = 12  # exported with a static sequence length
    (directory / "manifest.json").write_text(json.dumps(document))
    tagger = serve.load(directory)
    tagger.session = Recording(table_graph(table, "logits"))
    (result,) = tagger.predict(["London."])  # 4 tokens with [CLS] and [SEP], padded to 12
    assert tagger.session.shapes == [(1, 12)]
    tagger.warm_up(3)
    assert tagger.session.shapes[-1] == (3, 12)  # the bundle's length, not the tokenizer's max_length (32)
    assert [(e["entity"], e["text"]) for e in result["entities"]] == [("LOC", "London")]


def test_a_segmentation_mask_comes_back_at_the_images_own_size() -> None:
    """predict passes each image's size to postprocess: an identity graph makes the three channels the
    class logits, so a green image is class 1 everywhere, at 12 x 6 rather than the model's 8 x 8."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixel_values"], ["logits"])], "identity",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "height", "width"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()
    document = with_(IMAGE_MANIFEST, outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
                     postprocessing={"kind": "segmentation", "labels": ["red", "green", "blue"]})
    green = np.zeros((6, 12, 3), np.uint8)
    green[..., 1] = 255
    (result,) = predictor(document, model).predict([green])
    assert result["input"] == "<array (6, 12, 3)>" and result["size"] == [12, 6]
    np.testing.assert_array_equal(result["mask"], np.ones((6, 12), np.uint8))
    assert result["classes"] == [{"index": 1, "label": "green", "pixels": 72, "fraction": 1.0}]



def test_more_than_one_unknown_name_is_listed_and_an_unmapped_type_is_named() -> None:
    three = onnx.load_from_string(image_graph())
    three.graph.input.extend([helper.make_tensor_value_info("extra_b", TensorProto.FLOAT, [1]),
                              helper.make_tensor_value_info("extra_a", TensorProto.FLOAT, [1])])
    with pytest.raises(BundleError, match="model.onnx also takes extra_a, extra_b, which the manifest"):
        check_graph(parse_manifest(IMAGE_MANIFEST), session(three.SerializeToString()), "model.onnx")
    double = onnx.load_from_string(image_graph())
    double.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    double.graph.node.insert(0, helper.make_node("Cast", ["pixel_values"], ["as_float"], to=TensorProto.FLOAT))
    double.graph.node[1].input[0] = "as_float"
    with pytest.raises(BundleError, match=r"pixel_values is float32 .* but tensor\(double\)"):
        check_graph(parse_manifest(IMAGE_MANIFEST), session(double.SerializeToString()), "model.onnx")


def test_an_fp16_variant_on_cpu_carries_no_cuda_note(tmp_path: Path) -> None:
    loaded = serve.load(bundle(tmp_path / "b", {"fp16": {"file": "model.fp16.onnx"}}), variant="fp16")
    assert loaded.provider_line.endswith("; variant fp16") and "checked against torch" not in loaded.provider_line


def test_predict_passes_its_arguments_and_takes_batches_of_one() -> None:
    p = predictor()
    image = np.full((8, 8, 3), 255, np.uint8)
    results = p.predict([image, image, image], top_k=2, batch_size=1)
    assert [len(r["top_k"]) for r in results] == [2, 2, 2] and [s[0] for s in p.session.shapes] == [1, 1, 1]
    inputs = p.preprocess([image])["pixel_values"]
    np.testing.assert_array_equal(inputs, np.ones((1, 3, 8, 8), np.float32))  # (1 - 0.5) / 0.5
    tight = predictor(limits=Limits(max_image_pixels=63))
    with pytest.raises(LimitError):
        tight.preprocess([image])  # 8 x 8 = 64 pixels: the predictor's own limits apply


def test_question_and_context_are_held_to_the_limits() -> None:
    short = Limits(max_text_chars=5)
    with pytest.raises(LimitError):
        question_and_context({"question": "Who is she?", "context": "Ada."}, short)
    with pytest.raises(LimitError):
        question_and_context({"question": "Who?", "context": "Ada Lovelace."}, short)


def test_each_question_gets_its_own_windows(tmp_path: Path) -> None:
    table = np.zeros((len(VOCAB), 2))
    table[VOCAB.index("ada")] = [4, 2.5]
    table[VOCAB.index("london")] = [3, 4]
    reader = serve.load(text_bundle(tmp_path / "qa", table, "span_logits",
                                    {"kind": "question-answering", "stride": 2, "max_answer_tokens": 30}, max_length=10))
    first, second, third = reader.predict([{"question": "Who?", "context": SENTENCE},
                                           {"question": "Who?", "context": "Ada lives in London. Ada lives."},
                                           {"question": "Who?", "context": "London."}])
    # the second context: window 1 "ada lives in london ." holds the pair (ada, london), window 2
    # "london . ada lives" only (london, london) at a lower probability
    assert (first["answer"], second["answer"], third["answer"]) == ("London", "Ada lives in London", "London")
    assert (second["start"], second["end"]) == (0, 19)
    assert second["score"] == pytest.approx(_p(4, [0, 0, 3, 0]) * _p(4, [2.5, 0, 0, 0]), abs=1e-6)
    assert first["score"] == pytest.approx(_p(3, [0] * 3) * _p(4, [0] * 3), abs=1e-6)  # unchanged by its neighbours
    assert third["score"] == pytest.approx(_p(3, [0]) * _p(4, [0]), abs=1e-6)  # its own window's logits


def test_every_manifest_kind_has_its_output_kind_and_options_name_their_owners() -> None:
    """serve.kinds: the Predictor, the batcher, HTTP and the CLI ask the kind; each postprocessing kind a
    manifest may name has one, and each request option belongs to the kinds that read it."""
    from serve.kinds import kinds, kinds_taking
    from serve.manifest import POSTPROCESSING_KINDS

    assert set(kinds()) == set(POSTPROCESSING_KINDS)
    assert kinds_taking("min_score") == ["detection", "multi-label"] and kinds_taking("aggregation") == ["token-classification"]
    assert kinds_taking("question") == ["question-answering"] and kinds_taking("masks") == ["segmentation"]
    assert [name for name, kind in kinds().items() if kind.one_image_per_run] == ["detection"]
