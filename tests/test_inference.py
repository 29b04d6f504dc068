"""The Python API: keraslm.load(path).generate / .score, num_samples, beam search, evaluate."""

import json
import math

import pytest

import keraslm
from keraslm.errors import InvalidInputError

from conftest import run_cli


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
