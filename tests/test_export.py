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
def run(seed, temperature=1.0, prompts=("ROMEO:",)):
    count = len(prompts)
    out = generate(prompt=tf.constant(list(prompts)), max_new_tokens=tf.fill([count], 40),
                   temperature=tf.fill([count], float(temperature)), seed=tf.fill([count], tf.constant(seed, tf.int64)))
    return [t.decode("utf-8") for t in out["text"].numpy()], out["num_tokens"].numpy().tolist()
print(json.dumps({{
    "served": [t.decode("utf-8") for t in served["text"].numpy()],
    "served_keys": sorted(served),
    "seed_1": run(1), "seed_1_again": run(1), "seed_2": run(2),
    "greedy": run(5, temperature=0.0, prompts=("First Citizen:", "ROMEO:")),
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
    assert results["signatures"] == ["generate", "serving_default"]


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

    config, model, tokenizer = load_trained_model(str(trained_models[kind]["work_dir"]))
    for prompt, text in zip(("First Citizen:", "ROMEO:"), results["greedy"][0]):
        ids = tokenizer.tokenize(tf.constant([prompt])).to_list()[0]
        for _ in range(40):
            context = ids[-config.model.sequence_length :] if kind == "transformer" else ids
            logits = model(tf.constant([context]))[0, -1].numpy()
            logits[:2] = -np.inf  # [PAD] and [UNK] are never generated
            ids.append(int(np.argmax(logits)))
        expected = tokenizer.detokenize(tf.constant([ids[-40:]])).numpy()[0].decode("utf-8")
        assert text == expected


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
