"""Sequence-to-sequence translation: sentence pairs -> encoder-decoder -> translations of raw strings.

What the task owns: reading the pair files (keraslm.pairs; without --valid_data a seeded
--valid_fraction of the distinct source sentences is held out, every translation of one source
on the same side), token ids for both sides, the encoder-decoder (keraslm.tasks.seq2seq_model),
its loss (token cross-entropy over the target, padding excluded) and its export module with the
decoding loop and beam search (keraslm.tasks.seq2seq_export).

One tokenizer, trained on both sides' training text, reads sources and writes targets (a joint
vocabulary). Measured on eng-fra (BENCHMARKS.md, "Translation"): English and French share most
of their punctuation, names, numbers and many word pieces, so one vocabulary of V pieces covers
both languages with fewer [UNK]s than two vocabularies of V/2; and the export carries one
tokenizer. Targets keep whitespace tokens (a translation is detokenized back into text); sources
drop them, as classifiers do.
"""

import dataclasses

import keras
import numpy as np

from keraslm import pairs as pairs_lib, tables
from keraslm.errors import InvalidInputError
from keraslm.tasks.seq2seq_export import TranslatorServer
from keraslm.tasks.seq2seq_model import NUM_EXTRA_IDS, build_seq2seq_model, end_id, start_id

EVAL_BATCH_SIZE = 256


@dataclasses.dataclass
class Corpora:
    train: pairs_lib.Pairs
    valid: pairs_lib.Pairs


@dataclasses.dataclass
class Prepared:
    train_source: np.ndarray  # int32 [N, <= L], 0 = padding
    train_target: np.ndarray  # int32 [N, <= L]: the target's tokens then END
    valid_source: np.ndarray
    valid_target: np.ndarray


class Seq2SeqTask:
    name = "seq2seq"
    throughput_unit = "pairs"
    loss_unit = "token"  # The loss is the mean over target tokens.
    exportable = True

    def resolve(self, config):
        """START and END: two ids past the tokenizer's vocabulary."""
        config.model.extra_ids = NUM_EXTRA_IDS

    def read(self, config):
        train = config.train
        if "," in train.train_data:
            raise InvalidInputError(
                f"--train_data={train.train_data}: --task=seq2seq reads one file of pairs, not several (a repeated "
                "--train_data adds to a --flagfile's); merge them into one file, or give only one"
            )
        say = lambda message: print(message, flush=True)  # noqa: E731
        columns = dict(source_column=train.source_column, target_column=train.target_column, say=say)
        pairs = pairs_lib.read_pairs(train.train_data, "--train_data", **columns)
        if train.valid_data:
            return Corpora(pairs, pairs_lib.read_pairs(train.valid_data, "--valid_data", **columns))
        keep, held_out = pairs_lib.split_by_source(pairs, train.valid_fraction, train.seed)
        return Corpora(keep, held_out)

    def tokenizer_text(self, corpora):
        return "\n".join(corpora.train.sources + corpora.train.targets)

    def labels(self, corpora):
        del corpora
        return []

    def prepare(self, config, tokenizer, corpora, say, storage):
        del storage  # Pairs are held in memory (a pair file is read whole).
        length = config.model.sequence_length
        vocabulary_size = config.model.vocabulary_size
        arrays, cut = {}, {}
        for split, pairs in (("train", corpora.train), ("valid", corpora.valid)):
            source, source_cut = tables.tokenize_texts(tokenizer, pairs.sources, length)
            # Room for END; the decoder's input is START + these tokens, at most `length` positions.
            target, target_cut = tables.tokenize_texts(tokenizer, pairs.targets, length - 1, keep_whitespace=True)
            arrays[f"{split}_source"] = source
            arrays[f"{split}_target"] = _append_end(target, end_id(vocabulary_size))
            cut[split] = source_cut + target_cut
        if cut["train"] or cut["valid"]:
            say(
                f"keraslm: {cut['train']:,} training and {cut['valid']:,} validation sentences are longer than "
                f"--sequence_length={length} tokens (targets: {length - 1} and END) and were cut to it"
            )
        return Prepared(**arrays)

    def describe(self, prepared):
        return f"{len(prepared.train_source):,} training and {len(prepared.valid_source):,} validation pairs"

    def build_model(self, config, use_cudnn="auto"):
        return build_seq2seq_model(config.model, use_cudnn=use_cudnn)

    def compile_args(self, config):
        del config
        return {
            # The mean over the target's real tokens (padding has weight 0).
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
            "weighted_metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        }

    def train_dataset(self, prepared, config, start_step, num_steps):
        # Batches of row numbers, shuffled and grouped by source length as a classifier's are.
        rows = tables.classification_dataset(
            prepared.train_source,
            np.arange(len(prepared.train_source), dtype=np.int32),
            config.train.batch_size,
            config.train.seed,
            start_step,
            num_steps,
        )
        return _with_targets(rows, prepared.train_target, start_id(config.model.vocabulary_size))

    def eval_dataset(self, prepared, config):
        rows = tables.evaluation_batches(
            prepared.valid_source, np.arange(len(prepared.valid_source), dtype=np.int32), EVAL_BATCH_SIZE
        )
        dataset = _with_targets(rows, prepared.valid_target, start_id(config.model.vocabulary_size))
        return dataset.take(config.train.eval_steps) if config.train.eval_steps else dataset

    def units_per_step(self, config):
        return config.train.batch_size

    def export_module(self, model, tokenizer, config, export_config, config_path):
        return TranslatorServer(model, tokenizer, config, export_config, config_path)


def _append_end(target, end):
    """[tokens..., 0...] -> [tokens..., END, 0...] (one column wider)."""
    lengths = (target != 0).sum(axis=1)
    out = np.zeros([target.shape[0], target.shape[1] + 1], np.int32)
    out[:, : target.shape[1]] = target
    out[np.arange(len(target)), lengths] = end
    return out


def _with_targets(rows, targets, start):
    """(source ids, row numbers) batches -> ({encoder_token_ids, decoder_token_ids}, labels, weights).

    decoder_token_ids = START + the target without its last column: position t reads the tokens
    before target token t and predicts it (teacher forcing).
    """
    import tensorflow as tf

    targets = tf.constant(targets)

    def arrange(source, row_numbers):
        # Cut to the batch's longest target, rounded up as the sources are: few distinct shapes.
        labels = tables.trim_padding(tf.gather(targets, row_numbers))
        decoder_ids = tf.concat([tf.fill([tf.shape(labels)[0], 1], start), labels[:, :-1]], axis=1)
        weights = tf.cast(labels != 0, tf.float32)
        return {"encoder_token_ids": source, "decoder_token_ids": decoder_ids}, labels, weights

    return rows.map(arrange)
