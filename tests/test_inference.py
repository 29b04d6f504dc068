"""The Python API: keraslm.load(path).generate / .score, num_samples, beam search, evaluate."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import keraslm
from keraslm.errors import InvalidInputError

from conftest import REPO, run_cli, run_fresh_python


@pytest.fixture(scope="module")
def transformer(trained_models):
    return keraslm.load(str(trained_models["transformer"]["export_dir"]))


def test_generate_with_samples_and_per_prompt_controls(transformer):
    texts = transformer.generate(["ROMEO:", "KING:"], max_new_tokens=[15, 8], seed=3, num_samples=3)
    assert len(texts) == 6 and all(texts)
    # Sample i of a prompt is the single sample with seed + i.
    assert transformer.generate(["KING:"], max_new_tokens=8, seed=5)[0] == texts[5]
    assert len(set(texts[:3])) > 1


def test_beam_search_through_keras_nlp(transformer):
    prompts = ["First Citizen:", "ROMEO:"]
    beams = transformer.generate(prompts, max_new_tokens=[12, 6], num_beams=4)
    assert beams == transformer.generate(prompts, max_new_tokens=[12, 6], num_beams=4)
    assert [len(text) for text in beams] == [12, 6]  # characters: one token each
    # One beam is greedy search: the plumbing (positions, masks) agrees with the sampler's.
    one_beam = transformer._beam_search(prompts, [12, 6], 1, ["", ""])
    assert one_beam == transformer.generate(prompts, max_new_tokens=[12, 6], temperature=0.0)


def test_score_gives_perplexity(transformer):
    (score,) = transformer.score(["First Citizen:\nBefore we proceed any further, hear me speak."])
    assert score.num_tokens == 59 and score.log_likelihood < 0
    assert score.perplexity == pytest.approx(math.exp(-score.log_likelihood / score.num_tokens))


def test_per_prompt_seeds(transformer):
    texts = transformer.generate(["KING:", "KING:"], max_new_tokens=10, seed=[4, 5])
    assert texts == [transformer.generate(["KING:"], max_new_tokens=10, seed=seed)[0] for seed in (4, 5)]


def test_bad_controls_name_the_input(transformer):
    with pytest.raises(InvalidInputError, match="top_p must be in"):
        transformer.generate(["x"], top_p=0.0)
    with pytest.raises(InvalidInputError, match="max_new_tokens has 3 values for 1 prompts"):
        transformer.generate(["x"], max_new_tokens=[1, 2, 3])
    with pytest.raises(InvalidInputError, match="no prompts"):
        transformer.generate([])
    with pytest.raises(InvalidInputError, match="this model's limit of 4096"):
        transformer.generate(["x"], max_new_tokens=5000, num_beams=2)
    with pytest.raises(InvalidInputError, match="stop has 1 values for 2 prompts"):
        transformer.generate(["x", "y"], stop=["a"], num_beams=2)
    with pytest.raises(InvalidInputError, match="temperature must be finite"):
        transformer.generate(["x"], temperature=float("inf"))


def test_keraslm_evaluate_prints_json_and_matches_score(trained_models, tmp_path, transformer):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    data = tmp_path / "known.txt"
    data.write_text(text, encoding="utf-8")
    output = tmp_path / "metrics.json"
    completed = run_cli(
        "evaluate", f"--model_dir={trained_models['transformer']['export_dir']}", f"--data={data}", f"--output_json={output}"
    )
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads(completed.stdout.strip().splitlines()[-1])
    assert json.loads(output.read_text()) == metrics
    (score,) = transformer.score([text])
    assert metrics["num_tokens"] == score.num_tokens == len(text) - 1  # characters: one token each
    assert metrics["loss"] == pytest.approx(-score.log_likelihood / score.num_tokens, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    # Character tokens on ASCII text: one byte per predicted token.
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / math.log(2), rel=1e-5)


def test_defaults_are_keraslm_generates(trained_models, transformer):
    """temperature 0.8 and 200 new tokens, as keraslm-generate; the CLI prints the same text."""
    text = transformer.generate(["ROMEO:"], seed=2)[0]
    assert text == transformer.generate(["ROMEO:"], seed=2, temperature=0.8, max_new_tokens=200)[0]
    assert text != transformer.generate(["ROMEO:"], seed=2, temperature=1.0, max_new_tokens=200)[0]
    assert len(text) == 200  # characters: one token each
    completed = run_cli("generate", f"--model_dir={trained_models['transformer']['export_dir']}", "--prompt=ROMEO:", "--seed=2")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "ROMEO:" + text + "\n"


@pytest.mark.parametrize("name", ["temperature", "top_k", "top_p", "repetition_penalty", "seed", "num_samples"])
def test_beam_search_refuses_sampling_controls(transformer, name):
    values = dict(temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.2, seed=1, num_samples=2)
    with pytest.raises(InvalidInputError, match=f"^{name} applies to sampling; beam search \\(num_beams=3\\)"):
        transformer.generate(["ROMEO:"], max_new_tokens=4, num_beams=3, **{name: values[name]})
    # Left unset, they are fine; max_new_tokens and stop apply to beam search.
    assert len(transformer.generate(["ROMEO:"], max_new_tokens=4, num_beams=3, stop="\n\n")) == 1


@pytest.mark.parametrize("flag", ["--temperature=0.8", "--seed=1"])
def test_keraslm_generate_refuses_sampling_flags_with_beams(trained_models, flag):
    # Even a sampling flag given at its default value is refused: it would not do what it says.
    completed = run_cli("generate", f"--model_dir={trained_models['lstm']['export_dir']}", "--num_beams=2", flag)
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode != 0 and len(lines) == 1, completed.stderr
    name = flag.split("=")[0]
    assert lines[0].startswith(f"keraslm-generate: error: {name} applies to sampling; beam search (--num_beams=2)")


def test_seed_range_is_seed_plus_num_samples(transformer):
    top = 2**63 - 1
    # The largest seed works for one sample (it used to be refused); sample i uses seed + i.
    assert transformer.generate(["KING:"], max_new_tokens=3, seed=top)
    three = transformer.generate(["KING:"], max_new_tokens=3, seed=top - 2, num_samples=3)
    assert three[2] == transformer.generate(["KING:"], max_new_tokens=3, seed=top)[0]
    with pytest.raises(InvalidInputError, match=r"seed=9223372036854775806 with num_samples=3 .* seed \+ 2 must be at most 2\*\*63 - 1"):
        transformer.generate(["KING:"], max_new_tokens=3, seed=top - 1, num_samples=3)
    with pytest.raises(InvalidInputError, match=r"seed=-9223372036854775809 does not fit in a signed 64-bit integer"):
        transformer.generate(["KING:"], max_new_tokens=3, seed=-(2**63) - 1)


def test_the_api_gives_what_the_generate_signature_gives(transformer):
    """generate() calls one loop variant directly (plain, small batch / plain / full controls);
    the signature picks it in the graph. Both give the same texts."""
    cases = [
        (["ROMEO:", "KING:"], dict(max_new_tokens=[12, 5], temperature=[0.0, 0.9], seed=[1, 2])),
        (["KING:"] * 9, dict(max_new_tokens=6, temperature=1.0, seed=list(range(9)))),
        (["ROMEO:", "KING:"], dict(max_new_tokens=10, top_k=[0, 3], repetition_penalty=[1.2, 1.0], stop=["e", ""], seed=[3, 4])),
    ]
    for prompts, values in cases:
        texts = transformer.generate(prompts, **values)
        count = len(prompts)
        inputs = {
            "prompt": prompts,
            "max_new_tokens": values["max_new_tokens"],
            "temperature": values.get("temperature", 0.8),
            "top_k": values.get("top_k", 0),
            "top_p": 1.0,
            "repetition_penalty": values.get("repetition_penalty", 1.0),
            "seed": values["seed"],
            "stop": values.get("stop", ""),
        }
        dtypes = dict(max_new_tokens=np.int32, top_k=np.int32, seed=np.int64, prompt=object, stop=object)
        arrays = {}
        for name, value in inputs.items():
            value = value if isinstance(value, list) else [value] * count
            if dtypes.get(name) is object:
                value = [text.encode("utf-8") for text in value]
            arrays[name] = np.array(value, dtypes.get(name, np.float32))
        signature = transformer._signature("generate", **arrays)
        assert texts == [text.decode("utf-8") for text in signature["text"]]


def test_python_api_prints_nothing_on_stderr(trained_models):
    """keraslm.load, sampling, scoring and beam search in a fresh process: no TensorFlow start-up
    lines (the cuInit failure read as an error), nothing on stderr at all."""
    code = f"""
import keraslm
model = keraslm.load({str(trained_models['transformer']['export_dir'])!r})
model.generate(["ROMEO:"], max_new_tokens=5, seed=1)
model.score(["First Citizen"])
model.generate(["ROMEO:"], max_new_tokens=3, num_beams=2)
print("done")
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0 and completed.stdout == "done\n", completed.stderr[-3000:]
    assert completed.stderr == ""


def test_the_generate_path_does_not_import_keras(trained_models):
    """Keras (and matplotlib with it) costs seconds of start-up that sampling never uses."""
    code = f"""
import json, sys
import keraslm
keraslm.load({str(trained_models['lstm']['export_dir'])!r}).generate(["ROMEO:"], max_new_tokens=5, seed=1)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("keras", "keras_nlp", "keras_hub", "matplotlib"))))
"""
    assert run_fresh_python(code) == []


def test_tensorflow_is_whole_after_the_light_import(trained_models):
    """keraslm.load imports only TensorFlow's runtime; `import tensorflow` afterwards must still
    give all of it: eager ops, tf.function tracing with `==` as an op, tf.compat.v1, Keras and
    tensorflow-text."""
    code = f"""
import json, sys
import keraslm
keraslm.load({str(trained_models['lstm']['export_dir'])!r}).generate(["ROMEO:"], max_new_tokens=3, seed=1)
light = "tensorflow._api.v2.__internal__" not in sys.modules
import tensorflow as tf
import tensorflow.compat.v1 as v1

@tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
def equal_zero(x):
    return x == 0

import keras
import tensorflow_text
print(json.dumps({{
    "light": light,
    "eager": int(tf.constant(2) * 3),
    "traced": equal_zero(tf.constant([0, 1])).numpy().tolist(),
    "v1": v1.placeholder.__name__,
    "keras": keras.layers.Dense(2)(tf.zeros([1, 3])).shape.as_list(),
    "text": [[word.decode() for word in row] for row in tensorflow_text.regex_split(["a b"], " ").to_list()],
}}))
"""
    assert run_fresh_python(code) == {
        "light": True, "eager": 6, "traced": [True, False], "v1": "placeholder", "keras": [1, 2], "text": [["a", "b"]]
    }
