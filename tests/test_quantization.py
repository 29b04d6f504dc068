"""keraslm-export --quantize=int8: int8 weights in the SavedModel, the same signatures and answers.

The exports are loaded in a fresh process with tensorflow and tensorflow_text only, as TF
Serving would, and compared with the float32 export of the same checkpoint.
"""

import json
import os

import numpy as np
import pytest

from conftest import REPO, run_cli, run_fresh_python
from test_classify import TINY, _classify_args, _toy_examples, _write_csv

# Labels, scores and the stored weights' dtypes of a classifier export, with TF and tf_text alone.
CLASSIFY = """
import json, sys
import tensorflow as tf, tensorflow_text
texts = json.load(open({texts!r}, encoding="utf-8"))
result = {{}}
for name, path in (("float", {float_path!r}), ("int8", {int8_path!r})):
    model = tf.saved_model.load(path)
    out = model.signatures["serving_default"](text=tf.constant(texts))
    result[name] = {{
        "labels": [label.decode() for label in out["label"].numpy()],
        "scores": out["scores"].numpy().tolist(),
        "dtypes": sorted({{v.dtype.name for v in model.model_variables}}),
        "float_matrices": sorted(v.name for v in model.model_variables
                                 if v.dtype == tf.float32 and len(v.shape) >= 2 and not any(k in v.name for k in ("bias", "scale"))),
        "int8": sum(1 for v in model.model_variables if v.dtype == tf.int8),
    }}
result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("keraslm", "keras_nlp", "keras_hub"))
print(json.dumps(result))
"""

# Greedy continuations and log-likelihoods of LM exports (float, int8, int8 without the cache).
GENERATE = """
import json, sys
import tensorflow as tf, tensorflow_text
prompts = {prompts!r}
result = {{}}
for name, path in {paths!r}.items():
    model = tf.saved_model.load(path)
    count = len(prompts)
    out = model.signatures["generate"](
        prompt=tf.constant(prompts), max_new_tokens=tf.constant([8] * count), temperature=tf.constant([0.0] * count),
        top_k=tf.constant([0] * count), top_p=tf.constant([1.0] * count),
        repetition_penalty=tf.constant([1.0] * count), seed=tf.constant([1] * count, tf.int64),
        stop=tf.constant([""] * count))
    scored = model.signatures["score"](text=tf.constant({texts!r}))
    result[name] = {{
        "text": [t.decode("utf-8") for t in out["text"].numpy()],
        "log_likelihood": float(scored["log_likelihood"].numpy().sum()),
        "num_tokens": int(scored["num_tokens"].numpy().sum()),
        "int8": sum(1 for v in model.model_variables if v.dtype == tf.int8),
    }}
result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("keraslm", "keras_nlp", "keras_hub"))
print(json.dumps(result))
"""


def _variables_bytes(version_dir):
    directory = os.path.join(version_dir, "variables")
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


# === The quantization itself, on untrained models (seconds) ===


@pytest.mark.parametrize("task,model", [("classify", "lstm"), ("lm", "lstm"), ("lm", "transformer")])
def test_quantized_model_answers_as_the_float_one_and_keeps_no_float_kernels(task, model):
    import tensorflow as tf

    from keraslm.config import RunConfig
    from keraslm.quantization import quantize_model
    from keraslm.tasks import build_model

    config = RunConfig()
    config.task = task
    config.labels = ["a", "b", "c"]
    for name, value in dict(model=model, vocabulary_size=300, sequence_length=32, num_layers=2, num_heads=2, hidden_dim=32).items():
        setattr(config.model, name, value)
    keras_model = build_model(config, use_cudnn=False)
    # Larger weights than the initializers give, so that the outputs are far from zero.
    for variable in keras_model.trainable_variables:
        if len(variable.shape) >= 2:
            variable.assign(np.random.default_rng(0).normal(0, 0.3, variable.shape).astype("float32"))
    ids = np.random.default_rng(1).integers(1, 300, size=(4, 16)).astype("int32")
    before = keras_model(ids)
    quantize_model(keras_model)
    after = tf.function(lambda tokens: keras_model(tokens, training=False))(ids)
    before, after = (np.asarray(value[0] if isinstance(value, (list, tuple)) else value) for value in (before, after))
    # Per-channel int8: about 1% relative error per weight, which the layers average down.
    assert np.max(np.abs(after - before)) < 0.05 * np.max(np.abs(before))
    assert np.max(np.abs(before)) > 0.5
    float_matrices = [
        v.path for v in keras_model.variables
        if v.dtype == "float32" and len(v.shape) >= 2 and not v.path.endswith(("bias", "_scale"))
    ]
    # Keras leaves the learned position table float (attention biases are (heads, head_dim)).
    assert all("position_embedding" in path for path in float_matrices), float_matrices
    assert sum(v.dtype == "int8" for v in keras_model.variables) >= 5


def test_dequantized_kernels_are_the_float_ones_within_one_step():
    import keras

    from keraslm.quantization import dense_kernel, embedding_table, quantize_model

    inputs = keras.Input(shape=(None,), dtype="int32")
    embedding = keras.layers.Embedding(50, 8)
    dense = keras.layers.Dense(6)
    einsum = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3))
    hidden = embedding(inputs)
    model = keras.Model(inputs, [dense(hidden), einsum(hidden)])
    originals = [np.array(dense.kernel), np.array(einsum.kernel), np.array(embedding.embeddings)]
    assert np.array_equal(dense_kernel(dense).numpy(), originals[0])  # Float layers: as they are.
    quantize_model(model)
    for original, restored, axis in (
        (originals[0], dense_kernel(dense).numpy(), 0),
        (originals[1], dense_kernel(einsum).numpy(), 0),
        (originals[2], embedding_table(embedding).numpy(), 1),
    ):
        step = np.max(np.abs(original), axis=axis, keepdims=True) / 127
        assert restored.shape == original.shape
        assert np.all(np.abs(restored - original) <= step * 0.5 + 1e-7)


# === Exports of trained models, loaded as TF Serving would ===


@pytest.fixture(scope="module", params=sorted(TINY))
def classifier_exports(request, tmp_path_factory):
    from keraslm.export import export_from_work_dir

    root = tmp_path_factory.mktemp(f"int8_{request.param}")
    train = root / "train.csv"
    _write_csv(train, _toy_examples(240, seed=1))
    work_dir = root / "run"
    completed = run_cli("train", *_classify_args(train, work_dir, *TINY[request.param]))
    assert completed.returncode == 0, completed.stderr[-3000:]
    float_dir = export_from_work_dir(str(work_dir), str(root / "float"), verbose=False)
    # The int8 export through the command line, as a user makes it.
    completed = run_cli("export", f"--work_dir={work_dir}", f"--export_dir={root / 'int8'}", "--quantize=int8")
    assert completed.returncode == 0, completed.stderr[-3000:]
    int8_dir = str(root / "int8" / "1")
    texts = [text for text, _ in _toy_examples(60, seed=9)]
    with open(REPO / "data" / "sst2" / "dev.tsv", encoding="utf-8") as file:
        texts += [line.split("\t")[0] for line in file.read().splitlines()[1:61]]
    (root / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    results = run_fresh_python(CLASSIFY.format(texts=str(root / "texts.json"), float_path=float_dir, int8_path=int8_dir))
    return {"kind": request.param, "float_dir": float_dir, "int8_dir": int8_dir, "results": results}


def test_int8_classifier_agrees_with_the_float_one(classifier_exports):
    results = classifier_exports["results"]
    agree = np.mean([a == b for a, b in zip(results["float"]["labels"], results["int8"]["labels"])])
    assert agree >= 0.95, agree
    difference = np.max(np.abs(np.array(results["float"]["scores"]) - np.array(results["int8"]["scores"])))
    assert difference < 0.05, difference
    assert results["modules"] == []


def test_int8_classifier_stores_int8_weights(classifier_exports):
    results = classifier_exports["results"]
    assert results["float"]["int8"] == 0
    assert results["int8"]["int8"] >= 3 and "int8" in results["int8"]["dtypes"]
    # Only the Transformer's position table stays a float matrix.
    assert len(results["int8"]["float_matrices"]) == (1 if classifier_exports["kind"] == "transformer" else 0), results["int8"]
    ratio = _variables_bytes(classifier_exports["int8_dir"]) / _variables_bytes(classifier_exports["float_dir"])
    assert ratio < 0.45, ratio
    with open(os.path.join(classifier_exports["int8_dir"], "assets", "config.json"), encoding="utf-8") as file:
        assert json.load(file)["export"]["quantize"] == "int8"


@pytest.fixture(scope="module")
def lm_exports(trained_models, tmp_path_factory):
    from keraslm.config import ExportConfig
    from keraslm.export import export_from_work_dir

    root = tmp_path_factory.mktemp("int8_lm")
    paths = {}
    for kind in ("transformer", "lstm"):
        work_dir = str(trained_models[kind]["work_dir"])
        paths[f"{kind}_float"] = export_from_work_dir(work_dir, str(root / f"{kind}_float"), verbose=False)
        paths[f"{kind}_int8"] = export_from_work_dir(
            work_dir, str(root / f"{kind}_int8"), ExportConfig(quantize="int8"), verbose=False
        )
    # The reference path: the int8 Keras layers over the whole context at every step.
    paths["transformer_int8_recompute"] = export_from_work_dir(
        str(trained_models["transformer"]["work_dir"]), str(root / "recompute"),
        ExportConfig(quantize="int8", kv_cache=False), verbose=False,
    )
    prompts = ["First Citizen:", "ROMEO:", "KING HENRY:", "All:", "MENENIUS:", "The ", "And ", "What"]
    texts = ["First Citizen:\nBefore we proceed any further, hear me speak.", "All:\nSpeak, speak."]
    return run_fresh_python(GENERATE.format(prompts=prompts, paths=paths, texts=texts))


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_int8_language_model_continues_and_scores_as_the_float_one(lm_exports, kind):
    float_run, int8_run = lm_exports[f"{kind}_float"], lm_exports[f"{kind}_int8"]
    assert int8_run["int8"] > 0 and float_run["int8"] == 0
    prompts = len(float_run["text"])
    first_equal = sum(a[:1] == b[:1] for a, b in zip(float_run["text"], int8_run["text"]))
    assert first_equal >= prompts - 1, (float_run["text"], int8_run["text"])
    perplexity_ratio = np.exp((float_run["log_likelihood"] - int8_run["log_likelihood"]) / float_run["num_tokens"])
    assert perplexity_ratio < 1.02, perplexity_ratio
    assert lm_exports["modules"] == []


def test_int8_cached_decoding_reads_the_int8_weights(lm_exports):
    """The key/value-cache step multiplies its own matrices; they must be the dequantized int8
    weights (a raw int8 kernel read as float gives noise, a kept float copy is not int8)."""
    cached, recomputed = lm_exports["transformer_int8"], lm_exports["transformer_int8_recompute"]
    equal = sum(a[:3] == b[:3] for a, b in zip(cached["text"], recomputed["text"]))
    assert equal >= len(cached["text"]) - 1, (cached["text"], recomputed["text"])


def test_quantize_flags_refused_where_they_do_not_apply(tmp_path):
    from keraslm.config import ExportConfig
    from keraslm.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="--format=tflite"):
        ExportConfig(quantize="dynamic_range").validate()
    with pytest.raises(InvalidInputError, match="--quantize=int8 is for SavedModels"):
        ExportConfig(format="tflite", quantize="int8").validate()
