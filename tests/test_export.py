"""Exported SavedModels: TF Serving layout, and raw strings in / text out in a fresh process."""

import json

import numpy as np
import pytest

from conftest import CHINESE_SENTENCE, run_cli, run_fresh_python

# Only TensorFlow and tensorflow-text, as on a TF Serving client; the check at the end proves
# that nothing of keraslm or keras-nlp was needed.
LOAD_AND_CALL = """
import json, sys
import tensorflow as tf, tensorflow_text
model = tf.saved_model.load({path!r})
served = model.signatures["serving_default"](prompt=tf.constant(["ROMEO:", {chinese!r}, ""]))
generate = model.signatures["generate"]
def run(seed, temperature=1.0, prompts=("ROMEO:",), **controls):
    count = len(prompts)
    values = dict(max_new_tokens=40, temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=seed, stop="")
    values.update(controls)
    dtypes = dict(max_new_tokens=tf.int32, top_k=tf.int32, seed=tf.int64, stop=tf.string)
    inputs = {{name: tf.constant(value if isinstance(value, list) else [value] * count, dtypes.get(name, tf.float32))
              for name, value in values.items()}}
    out = generate(prompt=tf.constant(list(prompts)), **inputs)
    return [t.decode("utf-8") for t in out["text"].numpy()], out["num_tokens"].numpy().tolist()
def error(**controls):
    try:
        run(1, **controls)
    except tf.errors.InvalidArgumentError as e:
        return e.message
scored = model.signatures["score"](text=tf.constant(["First Citizen:\\nBefore we proceed", {chinese!r}, "F"]))
print(json.dumps({{
    "served": [t.decode("utf-8") for t in served["text"].numpy()],
    "served_keys": sorted(served),
    "seed_1": run(1), "seed_1_again": run(1), "seed_2": run(2),
    "greedy": run(5, temperature=0.0, prompts=("First Citizen:", "ROMEO:")),
    "top_k_1": run(9, top_k=1, prompts=("First Citizen:", "ROMEO:")),
    "mixed": run([1, 2, 3], temperature=[0.0, 1.0, 0.9], top_k=[0, 5, 0], top_p=[1.0, 1.0, 0.8],
                 repetition_penalty=[1.0, 1.3, 1.0], max_new_tokens=[40, 10, 25], prompts=("First Citizen:", "ROMEO:", "KING:")),
    "stop": run(3, stop="e", prompts=("First Citizen:",)),
    "free": run(3, prompts=("First Citizen:",)),
    "chinese": run(4, prompts=({chinese!r},)),
    "errors": {{
        "temperature": error(temperature=-1.0), "top_p": error(top_p=1.5), "top_p_zero": error(top_p=0.0),
        "top_k": error(top_k=-1), "max_new_tokens": error(max_new_tokens=0), "too_many": error(max_new_tokens=100000),
        "repetition_penalty": error(repetition_penalty=0.0),
        "temperature_inf": error(temperature=float("inf")), "stop_long": error(stop="x" * 129),
    }},
    "score": [scored["log_likelihood"].numpy().tolist(), scored["num_tokens"].numpy().tolist()],
    "signatures": sorted(model.signatures),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("keraslm", "keras_nlp", "keras_hub")),
}}))
"""


@pytest.fixture(scope="module", params=["transformer", "lstm"])
def fresh_process_results(request, trained_models):
    export_dir = trained_models[request.param]["export_dir"]
    path = str(export_dir / "1")
    return request.param, run_fresh_python(LOAD_AND_CALL.format(path=path, chinese=CHINESE_SENTENCE))


def test_serving_default_continues_raw_strings(fresh_process_results):
    _, results = fresh_process_results
    assert results["served_keys"] == ["text"]
    assert len(results["served"]) == 3 and all(results["served"])
    assert results["signatures"] == ["generate", "score", "serving_default"]


def test_loading_needs_neither_keraslm_nor_keras_nlp(fresh_process_results):
    _, results = fresh_process_results
    assert results["modules"] == []


def test_same_seed_same_text_and_token_counts(fresh_process_results):
    _, results = fresh_process_results
    assert results["seed_1"] == results["seed_1_again"]
    assert results["seed_1"][1] == [40]
    assert results["seed_1"][0] != results["seed_2"][0]


def test_greedy_generation_is_the_keras_models_argmax_path(fresh_process_results, trained_models):
    kind, results = fresh_process_results
    from keraslm.training import load_trained_model
    import tensorflow as tf

    config, model, tokenizer, _ = load_trained_model(str(trained_models[kind]["work_dir"]))
    for prompt, text in zip(("First Citizen:", "ROMEO:"), results["greedy"][0]):
        ids = tokenizer.tokenize(tf.constant([prompt])).to_list()[0]
        for _ in range(40):
            context = ids  # The LSTM reads everything.
            if kind == "transformer":
                # The cache's window (README): it starts at 0, and each time it is full it jumps
                # so as to keep the last S // 4 tokens.
                size, current = config.model.sequence_length, len(ids) - 1
                stride = size - size // 4
                start = 0 if current < size else stride * ((current - size) // stride + 1)
                context = ids[start:]
            logits = model(tf.constant([context]))[0, -1].numpy()
            logits[:2] = -np.inf  # [PAD] and [UNK] are never generated
            ids.append(int(np.argmax(logits)))
        expected = tokenizer.detokenize(tf.constant([ids[-40:]])).numpy()[0].decode("utf-8")
        assert text == expected


def test_top_k_1_is_greedy_and_rows_mix_settings(fresh_process_results):
    _, results = fresh_process_results
    assert results["top_k_1"] == results["greedy"]
    texts, counts = results["mixed"]
    assert counts == [40, 10, 25]
    assert texts[0] == results["greedy"][0][0]  # the greedy row is unaffected by its neighbours


def test_stop_cuts_the_text_before_the_stop_string(fresh_process_results):
    _, results = fresh_process_results
    (free,), _ = results["free"]
    (stopped,), (count,) = results["stop"]
    assert "e" in free and stopped == free[: free.index("e")]
    assert count < 40


def test_chinese_prompt_round_trip(fresh_process_results):
    _, results = fresh_process_results
    (text,), (count,) = results["chinese"]
    assert count == 40 and text


def test_bad_values_raise_errors_that_name_the_input(fresh_process_results):
    _, results = fresh_process_results
    errors = results["errors"]
    assert "temperature must be >= 0" in errors["temperature"]
    assert "top_p must be in (0, 1]" in errors["top_p"] and "top_p must be in (0, 1]" in errors["top_p_zero"]
    assert "top_k must be >= 0" in errors["top_k"]
    assert "max_new_tokens must be at least 1" in errors["max_new_tokens"]
    assert "max_new_tokens must be at most 4096" in errors["too_many"]
    assert "repetition_penalty must be > 0" in errors["repetition_penalty"]
    assert "temperature must be finite" in errors["temperature_inf"]
    assert "stop must be at most 128 bytes" in errors["stop_long"]


def test_score_matches_the_training_loss_per_token(fresh_process_results, trained_models, corpora):
    kind, results = fresh_process_results
    import tensorflow as tf
    from keraslm import data
    from keraslm.training import load_trained_model

    config, model, tokenizer, _ = load_trained_model(str(trained_models[kind]["work_dir"]))
    sequence_length = config.model.sequence_length
    text = "First Citizen:\nBefore we proceed"
    ids = data.tokenize_text(tokenizer, text)
    # The training loss (training.py's loss function) on the window training would validate on.
    assert len(ids) <= sequence_length + 1  # one window
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras_loss = float(loss(ids[None, 1:], model(ids[None, :-1])))
    (log_likelihood, _, single_token), (count, chinese_count, single_count) = results["score"]
    assert count == len(ids) - 1 and single_count == 0 and single_token == 0.0 and chinese_count > 0
    assert -log_likelihood / count == pytest.approx(keras_loss, abs=1e-3)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_exports_need_neither_xla_nor_cudnn(trained_models, kind):
    """A stock TF Serving has no XLA JIT on CPU, and cuDNN kernels have no CPU version."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((trained_models[kind]["export_dir"] / "1" / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
        assert "_XlaMustCompile" not in function.attr
    assert "InplaceUpdate" in ops or kind == "lstm"  # the cache's in-place writes are plain TF ops
    assert not [op for op in ops if op.startswith(("Xla", "Cudnn"))]


def test_export_layout_versions_and_assets(trained_models, tmp_path):
    work_dir = trained_models["lstm"]["work_dir"]
    export_dir = tmp_path / "served"
    for expected_version in (1, 2):
        completed = run_cli("export", f"--work_dir={work_dir}", f"--export_dir={export_dir}", "--max_new_tokens=7")
        assert completed.returncode == 0, completed.stderr
        assert f"{export_dir}/{expected_version}" in completed.stdout
    assert sorted(path.name for path in export_dir.iterdir()) == ["1", "2"]  # no temporary left behind
    version = export_dir / "2"
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / "assets" / "vocabulary.txt").is_file()
    config = json.loads((version / "assets" / "config.json").read_text())
    assert config["model"]["model"] == "lstm" and config["export"]["max_new_tokens"] == 7


def test_generate_cli_uses_the_latest_version_of_a_base_dir(trained_models):
    export_dir = trained_models["transformer"]["export_dir"]
    args = ("generate", f"--model_dir={export_dir}", "--prompt=ROMEO:", "--max_new_tokens=30", "--seed=1")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ROMEO:") and len(first.stdout) > len("ROMEO:\n")
    assert first.stdout == second.stdout
    assert first.stderr == ""
    other = run_cli("generate", f"--model_dir={export_dir}/1", "--prompt=ROMEO:", "--max_new_tokens=30", "--seed=2")
    assert other.returncode == 0 and other.stdout != first.stdout
