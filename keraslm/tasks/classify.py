"""Text classification: labelled CSV/TSV/JSONL -> backbone + pooled head -> label names and scores.

What the task owns: reading the tables (labels from the training file, sorted; a seeded stratified
split of --valid_fraction without --valid_data), its model (backbone + classification head), loss and metrics, and
its export module (keraslm.tasks.classifier_export). The generic training loop in
keraslm.training runs it. With --teacher, the training loop scores the training texts with the
teacher (keraslm.distillation) into Corpora.teacher_scores; the training batches then carry those
scores with the labels, and the loss learns from both.
"""

import dataclasses
import glob
import os

import keras
import numpy as np

from keraslm import distillation, tables
from keraslm.backbones import build_backbone
from keraslm.errors import InvalidInputError
from keraslm.tasks.classifier_export import ClassifierServer
from keraslm.tasks.classifier_model import build_classifier

# Evaluation needs no gradients: larger batches, fewer steps.
EVAL_BATCH_SIZE = 256


@dataclasses.dataclass
class Corpora:
    train: tables.Table
    valid: tables.Table
    # The label vocabulary of the whole training file (the held-out split keeps every class).
    labels: list
    # --teacher's probabilities of each training text, float32 [N, num_classes] (set by keraslm.training).
    teacher_scores: np.ndarray = None


@dataclasses.dataclass
class Prepared:
    train_ids: np.ndarray  # int32 [N, L], 0 = padding
    train_labels: np.ndarray  # int32 [N]
    valid_ids: np.ndarray
    valid_labels: np.ndarray
    train_teacher_scores: np.ndarray = None  # float32 [N, num_classes], with --teacher


class ClassifyTask:
    name = "classify"
    # What a training step counts in the throughput record.
    throughput_unit = "examples"
    exportable = True

    def resolve(self, config):
        """Settings the task decides before reading: none. The backbone is bidirectional unless
        --init_from set --causal from a causal LM (keraslm.pretrained)."""
        del config

    def read(self, config):
        train = config.train
        paths = [path.strip() for path in train.train_data.split(",") if path.strip()]
        if len(paths) > 1:
            raise InvalidInputError(
                f"--train_data={train.train_data}: --task=classify reads one table, not {len(paths)} files (a repeated "
                "--train_data adds to a --flagfile's); merge them into one file, or give only one"
            )
        for flag, path in (("--train_data", train.train_data), ("--valid_data", train.valid_data)):
            if glob.has_magic(path) and not os.path.exists(path):
                raise InvalidInputError(
                    f"{flag}={path}: --task=classify reads one table, not a glob pattern (patterns are for --task=lm "
                    "and mlm corpora); give one file"
                )
        table = tables.read_table(train.train_data, "--train_data", train.text_column, train.label_column)
        labels = tables.label_vocabulary(table)  # At least two classes, before anything is written.
        if train.valid_data:
            valid = tables.read_table(train.valid_data, "--valid_data", train.text_column, train.label_column)
            # Unknown labels are refused now, before a tokenizer is trained.
            tables.label_ids(valid, labels, "--valid_data")
            return Corpora(table, valid, labels)
        # The same share of each class, seeded by --seed; shuffled, so sorted files split fairly.
        keep, held_out = tables.stratified_split(table.labels, train.valid_fraction, train.seed)
        if not len(held_out) or not len(keep):
            raise InvalidInputError(
                f"--train_data={train.train_data} has too few examples to hold out a validation set; give --valid_data"
            )
        pick = lambda positions: tables.Table(  # noqa: E731
            table.path, [table.texts[i] for i in positions], [table.labels[i] for i in positions], [table.lines[i] for i in positions]
        )
        return Corpora(pick(keep), pick(held_out), labels)

    def tokenizer_text(self, corpora):
        return "\n".join(corpora.train.texts)

    def labels(self, corpora):
        return corpora.labels

    def prepare(self, config, tokenizer, corpora, say, storage):
        del storage  # Labelled examples are held in memory (a table is read whole).
        label_names = config.labels
        length = config.model.sequence_length
        truncation = config.model.truncation
        train_ids, train_cut = tables.tokenize_texts(tokenizer, corpora.train.texts, length, truncation=truncation)
        valid_ids, valid_cut = tables.tokenize_texts(tokenizer, corpora.valid.texts, length, truncation=truncation)
        if train_cut or valid_cut:
            kept = "their first tokens kept" if truncation == "head" else "their first quarter and last three quarters kept"
            say(
                f"keraslm: {train_cut:,} training and {valid_cut:,} validation texts are longer than "
                f"--sequence_length={length} tokens and were truncated ({kept}; --truncation={truncation})"
            )
        valid_flag = "--valid_data" if config.train.valid_data else "--train_data"
        return Prepared(
            train_ids=train_ids,
            train_labels=tables.label_ids(corpora.train, label_names, "--train_data"),
            valid_ids=valid_ids,
            valid_labels=tables.label_ids(corpora.valid, label_names, valid_flag),
            train_teacher_scores=corpora.teacher_scores,
        )

    def describe(self, prepared):
        return (
            f"{len(prepared.train_labels):,} training and {len(prepared.valid_labels):,} validation examples"
        )

    def build_model(self, config, use_cudnn="auto"):
        # Bidirectional, unless fine-tuned from a causal language model (keraslm.pretrained):
        # a backbone keeps the direction it was pretrained in.
        causal = bool(config.model.causal)
        backbone = build_backbone(config.model, causal=causal, use_cudnn=use_cudnn, whole_texts=True)
        return build_classifier(backbone, len(config.labels), dropout=config.model.dropout, causal=causal)

    def compile_args(self, config):
        if config.train.teacher:
            # Training targets are packed (label, teacher scores); validation's are labels alone.
            return {
                "loss": distillation.DistillationLoss(config.train.distill_temperature, config.train.distill_alpha),
                "metrics": [distillation.accuracy_metric()],
            }
        return {
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        }

    def train_dataset(self, prepared, config, start_step, num_steps):
        targets = prepared.train_labels
        if prepared.train_teacher_scores is not None:
            # [N, 1 + C] rows batch exactly as the labels would: batch k is still a function of (seed, k).
            targets = distillation.packed_targets(prepared.train_labels, prepared.train_teacher_scores)
        return tables.classification_dataset(
            prepared.train_ids, targets, config.train.batch_size, config.train.seed, start_step, num_steps
        )

    def eval_dataset(self, prepared, config):
        dataset = tables.evaluation_batches(prepared.valid_ids, prepared.valid_labels, EVAL_BATCH_SIZE)
        return dataset.take(config.train.eval_steps) if config.train.eval_steps else dataset

    def units_per_step(self, config):
        return config.train.batch_size

    def export_module(self, model, tokenizer, config, export_config, config_path):
        del export_config  # Its settings are the language model's decoding defaults.
        return ClassifierServer(model, tokenizer, config, config_path)
