"""Pretrain on raw text (--task=mlm, --task=lm), then fine-tune a classifier (--init_from,
--freeze_steps): the pretrained weights arrive, frozen steps leave them alone, conflicts are
one-line errors, and the fine-tuned export is a classifier export like any other."""

import collections
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import SHAKESPEARE, run_cli, run_fresh_python
from test_classify import EXPORT_CHECK, _toy_examples, _write_csv

TINY_ENCODER = ["--model=transformer", "--sequence_length=32", "--num_layers=1", "--num_heads=2", "--hidden_dim=32"]
TINY_LSTM_LM = ["--model=lstm", "--sequence_length=32", "--num_layers=1", "--hidden_dim=32"]


def _common(work_dir, steps, eval_interval):
    return [
        f"--work_dir={work_dir}", "--tokenizer=char", "--batch_size=16", f"--train_steps={steps}",
        f"--eval_interval={eval_interval}", "--learning_rate=5e-3", "--seed=3",
    ]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pretraining_toy")
    _write_csv(directory / "train.csv", _toy_examples(240, seed=1))
    return directory


@pytest.fixture(scope="module")
def pretrained(toy, corpora, tmp_path_factory):
    """An MLM encoder and an LSTM language model, each pretrained on two files read as one corpus:
    Shakespeare (plain text) and the classifier's own training texts (a CSV's text column), and
    validated on more Shakespeare."""
    root = tmp_path_factory.mktemp("pretrained")
    valid = root / "valid.txt"
    valid.write_text(SHAKESPEARE.read_text(encoding="utf-8")[60_000:70_000], encoding="utf-8")
    corpus = [f"--train_data={corpora['english']}", f"--train_data={toy / 'train.csv'}", f"--valid_data={valid}"]
    runs = {"valid": valid}
    # A masked character is 15% of 32 per window: larger batches give the encoder enough of them.
    for task, model_args, steps, batch in (("mlm", TINY_ENCODER, 300, 64), ("lm", TINY_LSTM_LM, 60, 16)):
        work_dir = root / task
        completed = run_cli(
            "train", f"--task={task}", *corpus, *_common(work_dir, steps, steps), f"--batch_size={batch}", *model_args
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        runs[task] = work_dir
    return runs


def _backbone_weights(work_dir, step):
    """{layer name: weights} of the backbone of the run in work_dir at a checkpoint of its own."""
    from keraslm.config import load_run_config
    from keraslm.tasks import build_model

    backbone = build_model(load_run_config(work_dir / "config.json")).get_layer("backbone")
    prefix = str(work_dir / "checkpoints" / f"ckpt-{step}")
    tf.train.Checkpoint(backbone=backbone).restore(prefix).expect_partial().assert_existing_objects_matched()
    return backbone, {
        layer.name: [weight.numpy() for weight in layer.weights if "seed_generator" not in weight.path]
        for layer in backbone.layers
        if layer.trainable_weights
    }


def _checkpoint_values(prefix, part):
    """{key: value} of every variable under "backbone/" or "head/" in a checkpoint."""
    reader = tf.train.load_checkpoint(str(prefix))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(f"{part}/") and key.endswith(".ATTRIBUTES/VARIABLE_VALUE")
    }


def test_mlm_loss_falls_below_the_unigram_baseline(pretrained, corpora, toy):
    """Predicting a masked character from its context must beat knowing only how common it is."""
    metrics = json.loads((pretrained["mlm"] / "metrics.json").read_text())["evaluations"][-1]
    config = json.loads((pretrained["mlm"] / "config.json").read_text())
    assert config["task"] == "mlm" and config["model"]["extra_ids"] == 1 and config["model"]["causal"] is False
    assert config["train"]["train_data"] == f"{corpora['english']},{toy / 'train.csv'}"
    # The unigram baseline: the validation text's cross-entropy under the training text's
    # character frequencies (the two files the run read; add-one for unseen characters).
    texts = [line.split(",", 1)[0] for line in (toy / "train.csv").read_text(encoding="utf-8").splitlines()[1:]]
    counts = collections.Counter(corpora["english"].read_text(encoding="utf-8") + "\n".join(texts))
    valid = collections.Counter(pretrained["valid"].read_text(encoding="utf-8"))
    total = sum(counts.values()) + len(valid)
    unigram = -sum(n * math.log((counts[c] + 1) / total) for c, n in valid.items()) / sum(valid.values())
    assert metrics["val_loss"] < unigram - 0.1, (metrics, unigram)
    assert 0.0 < metrics["val_accuracy"] <= 1.0


def test_fine_tuning_starts_from_the_pretrained_backbone_and_freezes_it(pretrained, toy, tmp_path):
    work_dir, export_dir = tmp_path / "fine_tuned", tmp_path / "export"
    completed = run_cli(
        "train", "--task=classify", f"--init_from={pretrained['mlm']}", f"--train_data={toy / 'train.csv'}",
        f"--work_dir={work_dir}", f"--export_dir={export_dir}", "--batch_size=16", "--train_steps=60",
        "--eval_interval=30", "--freeze_steps=20", "--learning_rate=3e-3", "--dropout=0.1",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"the backbone starts from {pretrained['mlm']} (--task=mlm, step 300)" in completed.stdout
    config = json.loads((work_dir / "config.json").read_text())
    pretrained_config = json.loads((pretrained["mlm"] / "config.json").read_text())
    # The pretraining run's model and tokenizer, with fine-tuning's own dropout.
    assert config["tokenizer"] == pretrained_config["tokenizer"]
    assert {**config["model"], "dropout": 0.0} == pretrained_config["model"] and config["model"]["dropout"] == 0.1
    assert (work_dir / "tokenizer" / "vocabulary.txt").read_bytes() == (
        pretrained["mlm"] / "tokenizer" / "vocabulary.txt"
    ).read_bytes()
    # The evaluations: the end of the frozen steps (20) is one.
    steps = [record["step"] for record in json.loads((work_dir / "metrics.json").read_text())["evaluations"]]
    assert steps == [20, 30, 60]

    _, source = _backbone_weights(pretrained["mlm"], 300)
    _, frozen = _backbone_weights(work_dir, 20)
    _, tuned = _backbone_weights(work_dir, 60)
    assert sorted(source) == sorted(frozen) == ["embedding", "encoder_0", "final_norm"]
    # After 20 head-only steps every backbone weight is still the pretrained one ...
    assert all(np.array_equal(a, b) for name in source for a, b in zip(frozen[name], source[name]))
    # ... and then the backbone trains too.
    assert all(not np.array_equal(a, b) for name in source for a, b in zip(tuned[name], source[name]))
    # The head is new: the classifier's, not the masked-LM head.
    heads = _checkpoint_values(work_dir / "checkpoints" / "ckpt-60", "head")
    assert heads and all(key.startswith("head/classifier/") for key in heads)
    assert not _checkpoint_values(work_dir / "checkpoints" / "ckpt-60", "head/mlm_head")
    head_20 = _checkpoint_values(work_dir / "checkpoints" / "ckpt-20", "head")
    assert any(not np.array_equal(head_20[key], heads[key]) for key in heads)

    # The export is a classifier export like any other: fresh process, TensorFlow only.
    texts = ["a truly wonderful film", "送餐太慢，很失望", ""]
    result = run_fresh_python(EXPORT_CHECK.format(path=str(export_dir / "1"), texts=texts))
    assert result["outputs"]["scores"] == ["float32", [None, 2]]
    assert set(result["label"]) <= {"neg", "pos"}
    assert all(sum(scores) == pytest.approx(1.0, abs=1e-5) for scores in result["scores"])


def test_a_language_model_gives_a_causal_classifier(pretrained, toy, tmp_path):
    """An LSTM LM's backbone stays unidirectional; an LSTM may classify longer texts than its LM's windows."""
    work_dir, export_dir = tmp_path / "from_lm", tmp_path / "export"
    # --dropout adds layers the LM did not have; the weights arrive all the same.
    completed = run_cli(
        "train", "--task=classify", f"--init_from={pretrained['lm']}", f"--train_data={toy / 'train.csv'}",
        f"--work_dir={work_dir}", "--batch_size=16", "--train_steps=20", "--eval_interval=20", "--sequence_length=48",
        "--freeze_steps=10", "--dropout=0.2", f"--export_dir={export_dir}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    config = json.loads((work_dir / "config.json").read_text())
    assert config["model"]["causal"] is True and config["model"]["sequence_length"] == 48
    # The classifier's backbone is the LM's, with no backward layer, and starts from its weights.
    backbone, frozen = _backbone_weights(work_dir, 10)
    _, source = _backbone_weights(pretrained["lm"], 60)
    assert sorted(frozen) == sorted(source) == ["embedding", "lstm_0"]
    assert all(np.array_equal(a, b) for name in source for a, b in zip(frozen[name], source[name]))
    assert not [layer.name for layer in backbone.layers if "bidirectional" in layer.name]
    # Its export (last-state pooling included) serves in a TensorFlow-only process.
    result = run_fresh_python(EXPORT_CHECK.format(path=str(export_dir / "1"), texts=["good", "送餐太慢，很失望", ""]))
    assert all(sum(scores) == pytest.approx(1.0, abs=1e-5) for scores in result["scores"])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--init_from={mlm}", "--hidden_dim=64"],
            "--hidden_dim=64 conflicts with --hidden_dim=32 of the pretraining run --init_from={mlm}",
        ),
        (
            ["--init_from={mlm}", "--tokenizer=wordpiece"],
            "--tokenizer=wordpiece conflicts with --tokenizer=char of the pretraining run --init_from={mlm}",
        ),
        (
            ["--init_from={mlm}", "--sequence_length=48"],
            "--sequence_length=48 conflicts with --sequence_length=32 of the pretraining run",
        ),
        (["--init_from={missing}"], "--init_from={missing}: no such directory"),
        (["--freeze_steps=5"], "--freeze_steps=5 needs --init_from"),
    ],
)
def test_conflicts_are_one_line_errors_that_leave_nothing_behind(pretrained, toy, tmp_path, args, message):
    values = {"mlm": pretrained["mlm"], "missing": tmp_path / "nothing_here"}
    work_dir = tmp_path / "run"
    completed = run_cli(
        "train", "--task=classify", f"--train_data={toy / 'train.csv'}", f"--work_dir={work_dir}", "--train_steps=10",
        *[arg.format(**values) for arg in args],
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(**values) in lines[0], completed.stderr
    assert not work_dir.exists()


def test_mlm_is_for_transformers_and_is_not_exported(pretrained, corpora, tmp_path):
    completed = run_cli("train", "--task=mlm", f"--train_data={corpora['english']}", "--model=lstm", f"--work_dir={tmp_path / 'a'}")
    assert completed.returncode == 2 and "--task=mlm pretrains the Transformer encoder, not --model=lstm" in completed.stderr
    completed = run_cli("export", f"--work_dir={pretrained['mlm']}", f"--export_dir={tmp_path / 'export'}")
    assert completed.returncode == 2 and "has no serving signature to export" in completed.stderr
    assert not (tmp_path / "export").exists()
    # A classifier does not start from another classifier.
    completed = run_cli(
        "train", "--task=classify", f"--init_from={tmp_path}", f"--train_data={corpora['english']}",
        f"--work_dir={tmp_path / 'b'}",
    )
    assert completed.returncode == 2 and "has no config.json" in completed.stderr


def test_a_causal_classifier_pools_the_last_tokens_state_too():
    """Mean, max and, for a left-to-right backbone, the state at the last real token (ULMFiT)."""
    from keraslm.tasks.classifier_model import MaskedPooling

    hidden = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    mask = np.array([[True, True, True, False], [False, False, False, False]])
    pooled = MaskedPooling(last=True)(hidden, mask).numpy()
    assert pooled.shape == (2, 9)
    np.testing.assert_allclose(pooled[0], np.concatenate([hidden[0, :3].mean(0), hidden[0, 2], hidden[0, 2]]))
    np.testing.assert_allclose(pooled[1], np.zeros(9))  # An empty text: zeros, the bias decides.
    assert MaskedPooling()(hidden, mask).numpy().shape == (2, 6)


def _fine_tune_in_process(toy, init_from, work_dir, steps, dropout=0.0):
    from keraslm import training
    from keraslm.config import ModelConfig, RunConfig, TrainConfig

    train = TrainConfig(
        train_data=str(toy / "train.csv"), init_from=str(init_from) if init_from else "", batch_size=16,
        train_steps=steps, eval_interval=10,
    )
    config = RunConfig(task="classify", model=ModelConfig(dropout=dropout), train=train)
    return training.train(config, str(work_dir), verbose=False)


def test_a_fine_tuning_run_resumes_from_its_own_checkpoints_after_its_pretraining_run_is_gone(pretrained, toy, tmp_path):
    import shutil

    copy, work_dir = tmp_path / "lm_copy", tmp_path / "fine_tuned"
    shutil.copytree(pretrained["lm"], copy)
    assert _fine_tune_in_process(toy, copy, work_dir, 10, dropout=0.1).step == 10
    shutil.rmtree(copy)
    # The same command (and one without --init_from) goes on from step 10 with the run's own settings.
    result = _fine_tune_in_process(toy, copy, work_dir, 20, dropout=0.1)
    assert (result.step, result.steps_run) == (20, 10)
    assert _fine_tune_in_process(toy, None, work_dir, 30, dropout=0.1).steps_run == 10
    assert json.loads((work_dir / "config.json").read_text())["train"]["init_from"] == str(copy)


def test_a_damaged_pretraining_run_is_refused_before_anything_is_written(pretrained, toy, tmp_path):
    import shutil

    from keraslm.errors import InvalidInputError

    copy, work_dir = tmp_path / "lm_copy", tmp_path / "fine_tuned"
    shutil.copytree(pretrained["lm"], copy)
    for data_file in (copy / "checkpoints").glob("ckpt-*.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(InvalidInputError) as raised:
        _fine_tune_in_process(toy, copy, work_dir, 10)
    message = str(raised.value)
    assert f"--init_from={copy}: none of its checkpoints can be read" in message and "\n" not in message
    assert "the pretraining run is damaged" in message
    assert not work_dir.exists()


def test_an_lstm_fine_tune_keeps_its_lms_length_and_ignores_settings_an_lstm_does_not_read(pretrained, toy, tmp_path):
    from keraslm import training
    from keraslm.config import ModelConfig, RunConfig, TrainConfig

    train = TrainConfig(
        train_data=str(toy / "train.csv"), init_from=str(pretrained["lm"]), batch_size=16, train_steps=10,
        eval_interval=10,
    )
    # --num_heads and --intermediate_dim differ from the LM's (defaults) but an LSTM reads neither.
    config = RunConfig(task="classify", model=ModelConfig(num_heads=2, intermediate_dim=64), train=train)
    training.train(config, str(tmp_path / "run"), verbose=False, explicit={"num_heads", "intermediate_dim"})
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert model["sequence_length"] == 32  # The LM's, not the default 64: not given, so not changed.


def test_a_changed_init_from_must_have_the_tokenizer_the_run_copied(pretrained, toy, tmp_path):
    """Killed before its first checkpoint, a fine-tuning run restarts from --init_from; a run with
    another tokenizer would put its embedding rows under the wrong tokens, so it is refused."""
    import shutil

    from keraslm.errors import InvalidInputError

    work_dir, other = tmp_path / "fine_tuned", tmp_path / "other_lm"
    _fine_tune_in_process(toy, pretrained["lm"], work_dir, 10)
    shutil.rmtree(work_dir / "checkpoints")  # As if killed before the first checkpoint.
    (work_dir / "metrics.json").unlink()
    shutil.copytree(pretrained["lm"], other)
    spec = json.loads((other / "tokenizer" / "tokenizer.json").read_text())
    spec["lowercase"] = not spec.get("lowercase", False)
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(InvalidInputError) as raised:
        _fine_tune_in_process(toy, other, work_dir, 10)
    assert f"--init_from={other}: its tokenizer is not the one" in str(raised.value)
    assert f"give --init_from={pretrained['lm']}" in str(raised.value)
    # The run's own pretraining run is still accepted.
    assert _fine_tune_in_process(toy, pretrained["lm"], work_dir, 10).step == 10


def test_a_pretraining_run_without_its_checkpoints_says_they_are_gone(pretrained, toy, tmp_path):
    import shutil

    from keraslm.errors import InvalidInputError

    copy = tmp_path / "lm_copy"
    shutil.copytree(pretrained["lm"], copy)
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(InvalidInputError, match=r"records evaluations up to step 60 but its checkpoints/ holds no"):
        _fine_tune_in_process(toy, copy, tmp_path / "fine_tuned", 10)
    assert not (tmp_path / "fine_tuned").exists()


def test_a_backbone_is_not_frozen_again_on_resume(pretrained, toy, tmp_path):
    from keraslm import training
    from keraslm.config import ModelConfig, RunConfig, TrainConfig
    from keraslm.errors import InvalidInputError

    def fine_tune(steps, freeze_steps):
        train = TrainConfig(
            train_data=str(toy / "train.csv"), init_from=str(pretrained["lm"]), batch_size=16, train_steps=steps,
            eval_interval=10, freeze_steps=freeze_steps,
        )
        return training.train(RunConfig(task="classify", model=ModelConfig(), train=train), str(tmp_path / "run"), verbose=False)

    assert fine_tune(10, 5).step == 10
    with pytest.raises(InvalidInputError, match=r"--freeze_steps=15: the run in .* is at step 10 and has trained its backbone since step 5"):
        fine_tune(20, 15)
    assert fine_tune(20, 5).step == 20
