"""--teacher: a classifier that learns from a trained classifier's scores as well as from the labels.

Knowledge distillation (Hinton, Vinyals & Dean 2015): the student's loss is

    alpha * T² * KL(softmax(log p_teacher / T) || softmax(z / T)) + (1 - alpha) * CE(label, softmax(z))

with z the student's logits, T = --distill_temperature and alpha = --distill_alpha. A temperature
above 1 softens both distributions, so the student also learns how the teacher ranks the wrong
classes; T² keeps the soft term's gradients on the scale of the hard one's as T changes.

The teacher is another keraslm classifier with the same label names: an export (a version
directory, or a base directory for its newest version) or a training work directory. It scores
every training text once, before training, with its own tokenizer from the raw strings (an
export through its serving_default signature, as it serves; a work directory through its model
on its tokenizer's ids, as keraslm.tables prepares them). Its probabilities then travel with the
labels in the training batches, packed into one float32 tensor (packed_targets), so the generic
training loop, gradient accumulation and resume see an ordinary (ids, targets) dataset whose
batch k depends only on (seed, k); DistillationLoss and label_accuracy unpack them. Validation
batches carry the labels alone: their loss is the true labels' cross-entropy and their accuracy
the true labels', comparable with a run trained without a teacher.

This module sits beside keraslm.tables (the classify task imports its loss): it imports neither
the tasks nor the training loop, which hands it its work-directory loader.
"""

import json
import os
import sys
import time
import typing

import keras
import numpy as np

from keraslm import tables
from keraslm.config import load_run_config
from keraslm.errors import InputNotFoundError, InvalidInputError

ADVICE = "give a classifier's --export_dir (or a version directory in it) or its training --work_dir"
# Texts per teacher call: bounds memory, large enough that per-call overhead is small.
SCORE_BATCH_SIZE = 512
# The smallest teacher probability the loss takes the log of: a float32 softmax can round a very
# unlikely class to exactly 0, and log(0) would make the soft targets NaN.
MIN_PROBABILITY = 1e-12


class Teacher(typing.NamedTuple):
    # The resolved directory (an export's version directory, or the work directory) and what it is.
    path: str
    kind: str  # "export" or "work_dir"
    labels: list
    # texts (list of str) -> probabilities, float32 (len(texts), len(labels)).
    score: typing.Callable


def load_teacher(teacher, load_work_dir):
    """The classifier in --teacher=`teacher`, checked; load_work_dir(path) -> (config, model,
    tokenizer, checkpoint) is keraslm.training.load_trained_model."""
    where = f"--teacher={teacher}"
    if os.path.isfile(teacher):
        raise InvalidInputError(f"{where} is a file, not a directory; {ADVICE}")
    if not os.path.isdir(teacher):
        raise InputNotFoundError(f"{where}: no such directory; {ADVICE}")
    if os.path.isfile(os.path.join(teacher, "config.json")):
        return _work_dir_teacher(teacher, where, load_work_dir)
    path = _version_dir(teacher, where)
    return _export_teacher(path, where if path == teacher else f"{where} ({path})")


def _version_dir(teacher, where):
    """An export's version directory: `teacher` itself, or its newest numbered version with a
    saved_model.pb (a newer one without is an export in progress or one that died)."""
    if os.path.isfile(os.path.join(teacher, "saved_model.pb")):
        return teacher
    if os.path.isfile(os.path.join(teacher, "model.tflite")):
        raise InvalidInputError(
            f"{where} is a LiteRT (--format=tflite) export; give a SavedModel export or the run's --work_dir"
        )
    numbered = sorted((name for name in os.listdir(teacher) if name.isdigit()), key=int)
    complete = [name for name in numbered if os.path.isfile(os.path.join(teacher, name, "saved_model.pb"))]
    if not complete:
        raise InvalidInputError(
            f"{where} is neither a keraslm export (no saved_model.pb, nor a numbered version directory with one) nor a "
            f"training work directory (no config.json); {ADVICE}"
        )
    return os.path.join(teacher, complete[-1])


def _not_a_classifier(where, task):
    return InvalidInputError(f"{where} is a --task={task} model, not a classifier; {ADVICE}")


def _export_teacher(path, where):
    import tensorflow as tf

    try:
        with open(os.path.join(path, "assets", "config.json"), encoding="utf-8") as file:
            settings = json.load(file)
        task, labels = settings.get("task", "lm"), settings.get("labels")
    except (OSError, ValueError, AttributeError) as error:
        raise InvalidInputError(
            f"{where} has no readable assets/config.json ({error}), so it is not a keraslm export; {ADVICE}"
        ) from None
    if task != "classify":
        raise _not_a_classifier(where, task)
    try:
        serving = tf.saved_model.load(path).signatures["serving_default"]
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        detail = " ".join(str(error).split())[:200]
        raise InvalidInputError(
            f"{where} is a damaged or incomplete export ({detail}); export the teacher again with keraslm-export"
        ) from None
    if "scores" not in serving.structured_outputs or not isinstance(labels, list) or len(labels) < 2:
        raise InvalidInputError(f"{where} is not a keraslm classifier export (serving_default: text -> scores); {ADVICE}")

    def score(texts):
        return serving(text=tf.constant(texts, tf.string))["scores"].numpy()

    return Teacher(path, "export", list(labels), score)


def _work_dir_teacher(path, where, load_work_dir):
    import tensorflow as tf

    config = load_run_config(os.path.join(path, "config.json"))
    if config.task != "classify":
        raise _not_a_classifier(where, config.task)
    try:
        config, model, tokenizer, _ = load_work_dir(path)
    except InvalidInputError as error:
        # The loader names the directory as --work_dir; here the user gave it as --teacher.
        raise InvalidInputError(str(error).replace(f"--work_dir={path}", where)) from None

    # One graph for every batch shape: eager LSTM steps are several times slower.
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def probabilities(ids):
        return tf.nn.softmax(tf.cast(model(ids, training=False), tf.float32), axis=-1)  # (B, num_classes)

    def score(texts):
        # Tokenized and cut as its own training did (keraslm.tasks.classify.prepare).
        ids, _ = tables.tokenize_texts(tokenizer, texts, config.model.sequence_length, truncation=config.model.truncation)
        return probabilities(tf.constant(ids)).numpy()

    return Teacher(path, "work_dir", list(config.labels), score)


def check_labels(teacher, labels, flag="--teacher"):
    """The teacher's scores must be in the student's class order: the same label names."""
    if list(teacher.labels) != list(labels):
        raise InvalidInputError(
            f"{flag}={teacher.path} classifies into {', '.join(teacher.labels)} but --train_data has the labels "
            f"{', '.join(labels)}; give a teacher trained on the same label names"
        )


def score_texts(teacher, texts, say=print):
    """The teacher's probabilities of every text: float32 [N, num_classes], checked finite."""
    started = time.perf_counter()
    say(f"keraslm: the teacher {teacher.path} scores the {len(texts):,} training texts")
    # Texts of similar length go together, so a batch is padded little (a batch is cut to its
    # longest text); the scores are put back in the texts' order.
    order = np.argsort([len(text) for text in texts], kind="stable")
    parts, last_said = [], started
    for start in range(0, len(texts), SCORE_BATCH_SIZE):
        batch = [texts[index] for index in order[start : start + SCORE_BATCH_SIZE]]
        parts.append(np.asarray(teacher.score(batch), np.float32))
        if time.perf_counter() - last_said > 30:
            last_said = time.perf_counter()
            say(f"keraslm: the teacher has scored {start + len(batch):,} of {len(texts):,} texts")
    scores = np.empty((len(texts),) + parts[0].shape[1:], np.float32)
    scores[order] = np.concatenate(parts, axis=0)
    if scores.shape != (len(texts), len(teacher.labels)):
        raise InvalidInputError(
            f"--teacher={teacher.path} returned scores of shape {scores.shape} for {len(texts)} texts and "
            f"{len(teacher.labels)} labels; export the teacher again with keraslm-export"
        )
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
    if len(bad):
        raise InvalidInputError(
            f"--teacher={teacher.path} gives non-finite scores for {len(bad):,} training texts (the first is text "
            f"{bad[0] + 1}); its training diverged: give another teacher"
        )
    seconds = time.perf_counter() - started
    say(f"keraslm: the teacher scored {len(texts):,} texts in {seconds:.1f} s ({len(texts) / seconds:,.0f} texts/s)")
    return scores


def training_scores(config, table, load_work_dir, verbose=True):
    """--teacher's probabilities of the training table's texts, [N, num_classes]: the teacher
    loaded, checked against the student's labels (config.labels), and run."""
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else (lambda line: None)
    teacher = load_teacher(config.train.teacher, load_work_dir)
    check_labels(teacher, config.labels)
    scores = score_texts(teacher, table.texts, say)
    # How far the soft labels are from the true ones: a teacher that agrees with few has little to teach.
    agreement = float(np.mean(scores.argmax(axis=1) == tables.label_ids(table, config.labels, "--train_data")))
    say(
        f"keraslm: the teacher agrees with {agreement:.1%} of the training labels; --distill_alpha="
        f"{config.train.distill_alpha} of the loss follows its scores softened by --distill_temperature="
        f"{config.train.distill_temperature}"
    )
    return scores


# === Targets and loss ===


def packed_targets(label_ids, scores):
    """(label ids [N], teacher probabilities [N, C]) -> float32 [N, 1 + C]: column 0 the label id
    (exact in float32 below 2^24 classes), then the probabilities. One tensor, so the batches stay
    (ids, targets) pairs that every part of the training loop already handles."""
    label_ids = np.asarray(label_ids, np.float32)[:, None]
    return np.concatenate([label_ids, np.asarray(scores, np.float32)], axis=1)


def true_labels(targets):
    """Label ids (B,) out of packed targets (B, 1 + C), or of labels (B,) as they are."""
    if len(targets.shape) == 2:
        targets = targets[:, 0]
    return keras.ops.cast(targets, "int32")


def label_accuracy(targets, logits):
    """Accuracy on the true labels, for training batches (packed) and validation ones (labels)."""
    return keras.metrics.sparse_categorical_accuracy(true_labels(targets), logits)


def accuracy_metric():
    return keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")


class DistillationLoss(keras.losses.Loss):
    """alpha · T² · KL(teacher at T ‖ student at T) + (1 − alpha) · CE(label, student), per example.

    y_true: packed_targets rows (B, 1 + C) in training; labels (B,) in validation, whose loss is
    the cross-entropy alone. y_pred: the student's logits (B, C).
    """

    def __init__(self, temperature=2.0, alpha=0.5, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        ops = keras.ops
        hard = keras.losses.sparse_categorical_crossentropy(true_labels(y_true), y_pred, from_logits=True)  # (B,)
        if len(y_true.shape) == 1:
            return hard
        teacher = ops.maximum(y_true[:, 1:], MIN_PROBABILITY)  # (B, C)
        soft_targets = ops.log_softmax(ops.log(teacher) / self.temperature, axis=-1)  # log of the softened teacher
        student = ops.log_softmax(y_pred / self.temperature, axis=-1)  # (B, C)
        kl = ops.sum(ops.exp(soft_targets) * (soft_targets - student), axis=-1)  # (B,)
        return self.alpha * self.temperature**2 * kl + (1.0 - self.alpha) * hard

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha}
