"""Language modelling: raw text -> causal backbone + next-token head -> generate and score.

What the task owns: reading the text (without --valid_data the last --valid_fraction, 10% by
default, is held out: nanoGPT's convention), windows of sequence_length + 1 tokens (keraslm.data), its model and loss, and its
export module (keraslm.tasks.lm_export). The generic training loop in keraslm.training runs it.

The text is streamed, never held whole: it is tokenized once into shards in the work directory
(keraslm.token_store) and training reads them, so a corpus need not fit in memory.
"""

import dataclasses
import os

import keras

from keraslm import corpus as corpus_lib, data, token_store
from keraslm.backbones import build_backbone
from keraslm.tasks.lm_export import LanguageModelServer
from keraslm.tasks.lm_model import build_language_model

# Validation batches are larger than training ones: no gradients, and fewer steps to run.
MIN_EVAL_BATCH_SIZE = 64


@dataclasses.dataclass
class TextRange:
    """Characters [start, stop) of a corpus."""

    corpus: corpus_lib.Corpus
    start: int
    stop: int


@dataclasses.dataclass
class Corpora:
    train: TextRange
    valid: TextRange


@dataclasses.dataclass
class Prepared:
    train_ids: token_store.TokenShards
    valid_ids: token_store.TokenShards


class LanguageModelTask:
    name = "lm"
    # What the throughput record counts: tokens predicted per second.
    throughput_unit = "tokens"
    exportable = True

    def resolve(self, config):
        """Settings the task decides before reading: none (the backbone is always causal)."""
        del config

    def read(self, config):
        """The corpora, every file checked (and its characters counted) but not kept."""
        train = config.train
        corpus = corpus_lib.open_corpus(train.train_data, "--train_data", train.text_column)
        if train.valid_data:
            valid = corpus_lib.open_corpus(train.valid_data, "--valid_data", train.text_column)
            return Corpora(TextRange(corpus, 0, corpus.num_characters), TextRange(valid, 0, valid.num_characters))
        # The last characters are held out, as keraslm.data.split_for_validation cuts a str.
        split = int(corpus.num_characters * (1.0 - train.valid_fraction))
        return Corpora(TextRange(corpus, 0, split), TextRange(corpus, split, corpus.num_characters))

    def tokenizer_text(self, corpora):
        """The training text, or an even sample of it beyond corpus.TOKENIZER_SAMPLE_CHARACTERS."""
        train = corpora.train
        return corpus_lib.sample(train.corpus, train.start, train.stop)

    def labels(self, corpora):
        del corpora
        return []

    def prepare(self, config, tokenizer, corpora, say, storage):
        """Tokenizes the corpora into shards under storage.tokens_dir (or, on a worker that is not
        the chief, waits for the chief's), reusing shards of the same input and tokenizer."""
        stores = {}
        for name, text in (("train", corpora.train), ("valid", corpora.valid)):
            key = token_store.fingerprint(text.corpus, text.start, text.stop, storage.tokenizer_dir)
            directory = os.path.join(storage.tokens_dir, f"{name}-{key}")
            if storage.write:
                what = f"the {'training' if name == 'train' else 'validation'} text"
                earlier = sorted(
                    entry for entry in (os.listdir(storage.tokens_dir) if os.path.isdir(storage.tokens_dir) else [])
                    if entry.startswith(f"{name}-") and entry != os.path.basename(directory)
                )
                if earlier and not os.path.isdir(directory):
                    say(
                        f"keraslm: note: {what} changed since its tokens in {storage.tokens_dir}/{earlier[0]} were made "
                        "(a file's size or modification time, or the tokenizer): tokenizing it again. Validation figures "
                        "before and after this are not comparable"
                    )
                stores[name] = token_store.write(directory, text.corpus, text.start, text.stop, tokenizer, what, storage.verbose)
            else:
                stores[name] = _wait_for(directory, storage.wait)
        if storage.write:
            # Shards of earlier input (the files changed, or another tokenizer) are not needed again.
            token_store.remove_others(storage.tokens_dir, {os.path.basename(store.directory) for store in stores.values()})
        train_source = config.train.train_data
        valid_source = config.train.valid_data or f"the held-out last {config.train.valid_fraction:.0%} of {train_source}"
        data.check_long_enough(stores["train"].num_tokens, config.model.sequence_length, "--train_data", train_source)
        data.check_long_enough(stores["valid"].num_tokens, config.model.sequence_length, "validation text", valid_source)
        return Prepared(stores["train"], stores["valid"])

    def describe(self, prepared):
        return f"{prepared.train_ids.num_tokens:,} training and {prepared.valid_ids.num_tokens:,} validation tokens"

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


def _wait_for(directory, wait):
    """The chief's complete token store in `directory`, once it is there."""
    while True:
        store = token_store.load(directory)
        if store:
            return store
        wait()
