"""LiteRT (TFLite) export: a tiny LSTM classifier exported float, dynamic-range and full-integer
runs in the LiteRT interpreter and agrees with its SavedModel; a language model's logits model
agrees with Keras; unsupported combinations are refused."""

import json

import numpy as np
import pytest

from conftest import run_cli
from test_classify import _toy_examples, _write_csv

# (quantize, largest score difference allowed, share of labels that must agree)
VARIANTS = {"none": (1e-4, 1.0), "dynamic_range": (0.05, 0.95), "full_integer": (0.25, 0.9)}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    import tensorflow as tf

    from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, TrainConfig
    from keraslm.export import export_from_work_dir
    from keraslm.training import train

    root = tmp_path_factory.mktemp("tflite")
    _write_csv(root / "train.csv", _toy_examples(240, seed=1))
    config = RunConfig(
        task="classify",
        # lowercase: the runtime must normalize as the SavedModel does.
        tokenizer=TokenizerConfig(tokenizer="wordpiece", vocabulary_size=200, lowercase=True),
        model=ModelConfig(model="lstm", sequence_length=10, hidden_dim=32, num_layers=1),
        train=TrainConfig(
            train_data=str(root / "train.csv"), batch_size=16, train_steps=60, eval_interval=60, learning_rate=3e-3, seed=5
        ),
    )
    train(config, str(root / "run"), verbose=False)
    saved_model = export_from_work_dir(str(root / "run"), str(root / "saved_model"), verbose=False)
    # Short texts padded far, long ones truncated, upper case, an empty one, Chinese.
    texts = [text for text, _ in _toy_examples(60, seed=3)] + ["", "GOOD Good", "a " * 40, "这家外卖很好吃"]
    serving = tf.saved_model.load(saved_model).signatures["serving_default"]
    expected = serving(text=tf.constant(texts))["scores"].numpy()
    return {"root": root, "work_dir": root / "run", "texts": texts, "expected": expected}


@pytest.mark.parametrize("quantize", sorted(VARIANTS))
def test_litert_model_matches_the_saved_model(classifier, quantize):
    from keraslm import tflite_runtime
    from keraslm.config import ExportConfig
    from keraslm.export import export_from_work_dir

    export = ExportConfig(format="tflite", quantize=quantize, representative_examples=40)
    version = export_from_work_dir(str(classifier["work_dir"]), str(classifier["root"] / f"tflite_{quantize}"), export, verbose=False)
    config = json.loads((classifier["root"] / f"tflite_{quantize}" / "1" / "config.json").read_text())
    assert config["tflite"]["input"] == {"name": "token_ids", "dtype": "int32", "shape": [-1, 10], "pad_id": 0}
    assert (classifier["root"] / f"tflite_{quantize}" / "1" / "labels.txt").read_text() == "neg\npos\n"

    model = tflite_runtime.load(version)
    result = model.classify(classifier["texts"])
    expected = classifier["expected"]
    tolerance, agreement = VARIANTS[quantize]
    assert result["scores"].shape == expected.shape and result["scores"].dtype == np.float32
    assert np.abs(result["scores"] - expected).max() <= tolerance
    assert (result["label_id"] == expected.argmax(-1)).mean() >= agreement
    assert list(result["label"][:2]) == [["neg", "pos"][i] for i in result["label_id"][:2]]
    # Batches of any size, including one text, give the same scores.
    single = model.classify(classifier["texts"][:1])["scores"]
    np.testing.assert_allclose(single, result["scores"][:1], atol=1e-5)
    if quantize == "full_integer":
        # The ops that fell back to float are named, so a device knows what runs in float.
        assert isinstance(config["tflite"]["float_ops"], list)


def test_language_model_logits_match_keras(tmp_path):
    from keraslm import tflite_runtime
    from keraslm.config import ExportConfig, ModelConfig, RunConfig, TokenizerConfig
    from keraslm.tasks import build_model
    from keraslm.tflite_export import export_tflite
    from keraslm.tokenizers import train_tokenizer

    config = RunConfig(
        task="lm",
        tokenizer=TokenizerConfig(tokenizer="char"),
        model=ModelConfig(model="transformer", sequence_length=12, hidden_dim=16, num_layers=1, num_heads=2),
    )
    tokenizer = train_tokenizer(config.tokenizer, "to be, or not to be: that is the question\n", str(tmp_path / "tokenizer"))
    config.model.vocabulary_size = tokenizer.vocabulary_size
    model = build_model(config)
    version = export_tflite(
        model, tokenizer, str(tmp_path / "tokenizer"), config, str(tmp_path / "export"), ExportConfig(format="tflite"),
        str(tmp_path), verbose=False,
    )
    runtime = tflite_runtime.load(version)
    prompts = runtime.tokenize(["to be", "that is the question, or not"])
    logits = runtime.next_token_logits(prompts)
    for row, ids in enumerate(prompts):
        window = np.asarray(ids[-12:], np.int32)[None]
        expected = np.asarray(model(window, training=False))[0, -1]
        np.testing.assert_allclose(logits[row], expected, atol=1e-4)
    assert runtime.detokenize([prompts[0]]) == ["to be"]


def test_tasks_without_a_litert_export_are_refused():
    from keraslm.errors import InvalidInputError
    from keraslm.tflite_export import check_tflite_task

    for task in ("seq2seq", "mlm"):
        with pytest.raises(InvalidInputError, match="--format=tflite works for --task=classify and --task=lm"):
            check_tflite_task(task, "runs/x")


def test_a_bad_combination_is_refused_on_the_command_line(classifier, tmp_path):
    completed = run_cli(
        "export", f"--work_dir={classifier['work_dir']}", f"--export_dir={tmp_path / 'e'}", "--format=tflite", "--temperature=0.5"
    )
    assert completed.returncode != 0
    assert "--temperature" in completed.stderr and "exported with --format=tflite" in completed.stderr
    assert "--format, --quantize" in completed.stderr, completed.stderr
    assert not (tmp_path / "e").exists()
