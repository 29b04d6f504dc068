"""Language modelling: raw text -> causal backbone + next-token head -> generate and score.

What the task owns: reading the text (without --valid_data the last --valid_fraction, 10% by
default, is held out: nanoGPT's convention), windows of sequence_length + 1 tokens (keraslm.data), its model and loss, and its
export module (keraslm.tasks.lm_export). The generic training loop in keraslm.training runs it.
"""

import dataclasses

import keras
import numpy as np

from keraslm import data
from keraslm.backbones import build_backbone
from keraslm.tasks.lm_export import LanguageModelServer
from keraslm.tasks.lm_model import build_language_model

# Validation batches are larger than training ones: no gradients, and fewer steps to run.
MIN_EVAL_BATCH_SIZE = 64


@dataclasses.dataclass
class Corpora:
    train_text: str
    valid_text: str


@dataclasses.dataclass
class Prepared:
    train_ids: np.ndarray  # int32 [N]
    valid_ids: np.ndarray


class LanguageModelTask:
    name = "lm"
    # What the throughput record counts: tokens predicted per second.
    throughput_unit = "tokens"
    exportable = True

    def resolve(self, config):
        """Settings the task decides before reading: none (the backbone is always causal)."""
        del config

    def read(self, config):
        train = config.train
        train_text = data.read_corpus(train.train_data, "--train_data", train.text_column)
        if train.valid_data:
            return Corpora(train_text, data.read_corpus(train.valid_data, "--valid_data", train.text_column))
        return Corpora(*data.split_for_validation(train_text, train.valid_fraction))

    def tokenizer_text(self, corpora):
        return corpora.train_text

    def labels(self, corpora):
        del corpora
        return []

    def prepare(self, config, tokenizer, corpora, say):
        del say
        train_ids = data.tokenize_text(tokenizer, corpora.train_text)
        valid_ids = data.tokenize_text(tokenizer, corpora.valid_text)
        train_source = config.train.train_data
        valid_source = config.train.valid_data or f"the held-out last {config.train.valid_fraction:.0%} of {train_source}"
        data.check_long_enough(train_ids, config.model.sequence_length, "--train_data", train_source)
        data.check_long_enough(valid_ids, config.model.sequence_length, "validation text", valid_source)
        return Prepared(train_ids, valid_ids)

    def describe(self, prepared):
        return f"{len(prepared.train_ids):,} training and {len(prepared.valid_ids):,} validation tokens"

    def build_model(self, config, use_cudnn="auto"):
        backbone = build_backbone(config.model, causal=True, use_cudnn=use_cudnn, whole_texts=False)
        return build_language_model(backbone, config.model.vocabulary_size)

    def compile_args(self, config):
        del config
        return {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}

    def train_dataset(self, prepared, config, start_step, num_steps):
        train = config.train
        return data.language_model_dataset(
            prepared.train_ids, config.model.sequence_length, train.batch_size, train.seed, start_step, num_steps
        )

    def eval_dataset(self, prepared, config):
        batch_size = max(config.train.batch_size, MIN_EVAL_BATCH_SIZE)
        return data.evaluation_dataset(prepared.valid_ids, config.model.sequence_length, batch_size, config.train.eval_steps)

    def units_per_step(self, config):
        return config.train.batch_size * config.model.sequence_length

    def export_module(self, model, tokenizer, config, export_config, config_path):
        return LanguageModelServer(model, tokenizer, config, export_config, config_path)
