"""--teacher: the student learns from the teacher's scores (a teacher that says the same thing of
every text is followed, or ignored, as --distill_alpha asks), the loss is Hinton et al.'s, and a
teacher that cannot be used is a one-line error before anything is written."""

import json

import numpy as np
import pytest

from conftest import run_cli
from test_classify import _toy_examples, _write_csv

# What the constant teacher says of every text: "neg" 70%, whatever the text and its label.
CONSTANT = [0.7, 0.3]


def _constant_teacher(directory, probabilities, labels=("neg", "pos"), task="classify"):
    """An export in keraslm's layout whose serving_default gives `probabilities` for any text."""
    import tensorflow as tf

    class Constant(tf.Module):
        def __init__(self):
            super().__init__()
            self.probabilities = tf.Variable(probabilities, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            scores = tf.tile(self.probabilities[None, :], [tf.shape(text)[0], 1])  # (B, C)
            return {"scores": scores, "label_id": tf.argmax(scores, axis=-1, output_type=tf.int32)}

    module = Constant()
    version = directory / "1"
    tf.saved_model.save(module, str(version), signatures={"serving_default": module.serve})
    (version / "assets").mkdir(exist_ok=True)
    (version / "assets" / "config.json").write_text(json.dumps({"task": task, "labels": list(labels)}), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distill")
    paths = {"train": directory / "train.csv", "valid": directory / "valid.csv"}
    _write_csv(paths["train"], _toy_examples(240, seed=1))
    _write_csv(paths["valid"], _toy_examples(40, seed=2))
    paths["teacher"] = _constant_teacher(directory / "constant_teacher", CONSTANT)
    return paths


def _config(toy, **train):
    from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, TrainConfig

    return RunConfig(
        task="classify",
        tokenizer=TokenizerConfig(tokenizer="char"),
        model=ModelConfig(model="lstm", num_layers=1, hidden_dim=24, sequence_length=16),
        train=TrainConfig(**{
            "train_data": str(toy["train"]), "valid_data": str(toy["valid"]), "batch_size": 16, "train_steps": 100,
            "eval_interval": 100, "learning_rate": 1e-2, "seed": 3, **train,
        }),
    )


def _student_scores(work_dir, texts):
    """The trained student's probabilities, through the work-directory teacher loader."""
    from keraslm import distillation, training

    return distillation.load_teacher(str(work_dir), training.load_trained_model).score(texts)


@pytest.fixture(scope="module")
def students(toy, tmp_path_factory):
    """Two tiny students of the constant teacher: alpha = 1 (the teacher alone) and alpha = 0 (the
    labels alone). The first takes two micro-batches per step: the packed targets split with the ids."""
    from keraslm import training

    root = tmp_path_factory.mktemp("students")
    teacher = str(toy["teacher"])
    settings = {
        1.0: {"distill_temperature": 2.0, "batch_size": 8, "grad_accum_steps": 2},
        0.0: {},
    }
    return {
        alpha: training.train(_config(toy, teacher=teacher, distill_alpha=alpha, **extra), str(root / f"alpha{alpha:g}"), verbose=False)
        for alpha, extra in settings.items()
    }


def test_the_student_follows_a_constant_teacher_as_alpha_asks(toy, students):
    from keraslm import tables

    valid = tables.read_table(str(toy["valid"]))
    # alpha = 1: the teacher's soft labels say 70% "neg" of every text, so the student learns
    # that, whatever the true labels (half are "pos").
    followed = _student_scores(students[1.0].work_dir, valid.texts)
    assert np.abs(followed[:, 0] - CONSTANT[0]).max() < 0.1, followed[:, 0]
    assert abs(students[1.0].val_metrics["accuracy"] - 0.5) < 0.1  # It says "neg" of everything.

    # alpha = 0: the same teacher is ignored and the toy set is learned.
    assert students[0.0].val_metrics["accuracy"] >= 0.95, students[0.0].val_metrics
    ignored = _student_scores(students[0.0].work_dir, valid.texts)
    labels = np.array([label == "neg" for label in valid.labels])
    assert np.mean(np.where(labels, ignored[:, 0], ignored[:, 1])) > 0.9  # The true label's probability.


def test_a_work_dir_teacher_scores_as_its_export(toy, students, tmp_path):
    """A teacher given as its training directory tokenizes and scores as its export serves."""
    from keraslm import distillation, export, tables, training

    work_dir = students[0.0].work_dir
    export.export_from_work_dir(work_dir, str(tmp_path / "export"), verbose=False)
    texts = tables.read_table(str(toy["train"])).texts
    from_work_dir = distillation.load_teacher(work_dir, training.load_trained_model)
    from_export = distillation.load_teacher(str(tmp_path / "export"), training.load_trained_model)
    assert (from_work_dir.kind, from_export.kind) == ("work_dir", "export")
    assert from_work_dir.labels == from_export.labels == ["neg", "pos"]
    np.testing.assert_allclose(from_work_dir.score(texts), from_export.score(texts), atol=1e-5)


def test_the_loss_is_hintons_on_a_training_batch(toy):
    """The loss of one batch the task feeds model.fit against the formula computed in numpy."""
    from keraslm import distillation
    from keraslm.tasks.classify import ClassifyTask, Prepared

    temperature, alpha = 2.5, 0.3
    generator = np.random.default_rng(0)
    count, classes = 40, 3
    teacher = generator.dirichlet(np.ones(classes), size=count).astype(np.float32)
    teacher[0] = [1.0, 0.0, 0.0]  # A class the teacher rounds to exactly 0 must not make the loss NaN.
    prepared = Prepared(
        train_ids=generator.integers(1, 50, size=(count, 6)).astype(np.int32),
        train_labels=generator.integers(0, classes, size=count).astype(np.int32),
        valid_ids=None,
        valid_labels=None,
        train_teacher_scores=teacher,
    )
    config = _config(toy, teacher="unused", distill_temperature=temperature, distill_alpha=alpha)
    config.train.batch_size = count
    task = ClassifyTask()
    ids, targets = next(iter(task.train_dataset(prepared, config, 0, 1)))
    rows = [int(np.flatnonzero((prepared.train_ids == row).all(axis=1))[0]) for row in ids.numpy()[:, :6]]
    logits = generator.normal(size=(count, classes)).astype(np.float32) * 3

    loss = task.compile_args(config)["loss"]
    got = float(loss(targets, logits))

    def log_softmax(values):
        values = values - values.max(axis=1, keepdims=True)
        return values - np.log(np.exp(values).sum(axis=1, keepdims=True))

    labels, probabilities = prepared.train_labels[rows], np.maximum(teacher[rows].astype(np.float64), 1e-12)
    soft = np.exp(log_softmax(np.log(probabilities) / temperature))
    kl = (soft * (np.log(soft) - log_softmax(logits / temperature))).sum(axis=1)
    cross_entropy = -log_softmax(logits.astype(np.float64))[np.arange(count), labels]
    expected = np.mean(alpha * temperature**2 * kl + (1 - alpha) * cross_entropy)
    assert got == pytest.approx(expected, rel=1e-4)
    # Validation batches carry the labels alone: their loss is the cross-entropy, and the
    # accuracy is the true labels' in training and validation alike.
    assert float(loss(labels, logits)) == pytest.approx(np.mean(cross_entropy), rel=1e-4)
    accuracy = np.mean(logits.argmax(axis=1) == labels)
    for y in (targets, labels):
        metric = distillation.accuracy_metric()
        metric.update_state(y, logits)
        assert float(metric.result()) == pytest.approx(accuracy)


BAD_TEACHERS = {
    "missing": (lambda d: d / "nowhere", "--teacher={t}: no such directory; give a classifier's --export_dir"),
    "a file": (lambda d: d / "train.csv", "--teacher={t} is a file, not a directory"),
    "not keraslm": (lambda d: d, "--teacher={t} is neither a keraslm export (no saved_model.pb"),
    "other labels": (
        lambda d: _constant_teacher(d / "other_labels", [0.5, 0.5], labels=("negative", "positive")),
        "--teacher={t}/1 classifies into negative, positive but --train_data has the labels neg, pos",
    ),
    "a language model": (
        lambda d: _constant_teacher(d / "lm", [0.5, 0.5], task="lm"),
        "--teacher={t} ({t}/1) is a --task=lm model, not a classifier",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TEACHERS))
def test_a_bad_teacher_is_one_line_before_anything_is_written(toy, tmp_path, case):
    from keraslm import training
    from keraslm.errors import UserInputError

    make, expected = BAD_TEACHERS[case]
    teacher = make(tmp_path) if case != "a file" else make(toy["train"].parent)
    work_dir = tmp_path / "run"
    with pytest.raises(UserInputError) as raised:
        training.train(_config(toy, teacher=str(teacher)), str(work_dir), verbose=False)
    assert expected.format(t=teacher) in str(raised.value) and "\n" not in str(raised.value)
    assert not work_dir.exists()


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"teacher": "t", "distill_temperature": 0.0}, "--distill_temperature=0.0 must be positive"),
        ({"teacher": "t", "distill_temperature": float("nan")}, "--distill_temperature=nan must be a finite number"),
        ({"teacher": "t", "distill_alpha": 1.5}, "--distill_alpha=1.5 must be in [0, 1]"),
        ({"distill_alpha": 0.9}, "--distill_alpha=0.9 needs --teacher"),
    ],
)
def test_distillation_settings_are_checked(settings, expected):
    from keraslm.config import RunConfig, TrainConfig
    from keraslm.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        RunConfig(task="classify", train=TrainConfig(train_data="x.csv", **settings)).validate()


def test_teacher_is_refused_for_a_language_model_on_the_command_line(tmp_path):
    completed = run_cli(
        "train", "--task=lm", "--train_data=x.txt", f"--work_dir={tmp_path / 'run'}", f"--teacher={tmp_path}"
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "keraslm-train: error: --teacher is for --task=classify (a classifier learning from another's scores), not --task=lm"
    ], completed.stderr
