"""Raw text files -> token ids -> tf.data pipelines of (inputs, targets) windows.

Reading checks everything a user can get wrong (missing path, directory, not UTF-8, empty) and
says where. Training windows are a pure function of (seed, step), so a resumed run sees exactly
the batches the interrupted run would have seen.
"""

import numpy as np
import tensorflow as tf

from keraslm import corpus as corpus_lib
from keraslm.errors import InvalidInputError
from keraslm.files import read_utf8
from keraslm.token_store import shard_counts, shard_reader
from keraslm.tokenizers import text_chunks

# nanoGPT's convention: without --valid_data, the last 10% of the text is held out.
VALIDATION_FRACTION = 0.1


def read_text_file(path, flag="--train_data"):
    """Returns the whole file as str, or raises an error naming the flag, file and position."""
    text = read_utf8(path, flag, "a UTF-8 text file")
    if not text.strip():
        raise InvalidInputError(f"{flag}={path} is empty (no text besides whitespace); give a file with text")
    return text


def read_corpus(paths, flag="--train_data", text_column=""):
    """The raw text of one or more files (comma-separated, glob patterns allowed) as one str.

    Small corpora only: training streams the text (keraslm.corpus), which this joins. A plain
    UTF-8 text file (optionally .gz) is taken as it is; a CSV, TSV or JSONL file (optionally .gz)
    gives its text column (--text_column, or a guessed one), one example per line, labels ignored.
    Files are joined with a line break between them.
    """
    return "".join(corpus_lib.open_corpus(paths, flag, text_column).text())


def split_for_validation(text, fraction=VALIDATION_FRACTION):
    """Splits off the last `fraction` of the characters as validation text."""
    split = int(len(text) * (1.0 - fraction))
    return text[:split], text[split:]


def tokenize_text(tokenizer, text):
    """Tokenizes a whole text with a tf.data pipeline; returns int32 ids [N]."""
    chunks = text_chunks(text)
    if not chunks:
        return np.zeros([0], np.int32)
    dataset = (
        tf.data.Dataset.from_tensor_slices(chunks)
        .batch(64)
        .map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .map(lambda ids: ids.flat_values, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return np.concatenate([ids.numpy() for ids in dataset])


def check_long_enough(num_tokens, sequence_length, what, path):
    """A language-model window needs sequence_length + 1 tokens."""
    if num_tokens < sequence_length + 1:
        # "--train_data=a.txt" for a flag, "validation text a.txt" otherwise.
        source = f"{what}={path}" if what.startswith("--") else f"{what} {path}"
        raise InvalidInputError(
            f"{source} has {num_tokens} tokens, fewer than --sequence_length={sequence_length} + 1; "
            "use a longer text or a smaller --sequence_length"
        )


def _windows_per_epoch(num_tokens, sequence_length):
    """Windows of length+1 with stride length; one stride of slack lets each epoch start elsewhere."""
    count = (num_tokens - 1) // sequence_length
    return count - 1 if count >= 2 else count


def steps_per_epoch(num_tokens, sequence_length, batch_size):
    return max(1, _windows_per_epoch(num_tokens, sequence_length) // batch_size)


def language_model_dataset(shards, sequence_length, batch_size, seed, start_step=0, num_steps=None):
    """Shuffled (inputs, targets) batches of int32 [batch_size, sequence_length].

    `shards`: a keraslm.token_store.TokenShards, or one int32 array of ids (a single shard).
    Each epoch visits the shards in a fresh random order, SHUFFLE_SHARDS at a time with their
    windows interleaved; each shard is cut into windows of sequence_length + 1 at a random offset
    and its windows are shuffled. Only the shards being read are in memory, whatever the corpus
    size. Epochs follow each other without a gap. Everything is stateless random keyed by (seed,
    epoch, shard), so batch number k is the same whether or not the run was interrupted before it.
    A single shard (a corpus under 4M tokens) is keyed by (seed, epoch) alone: its batches are
    keraslm 0.2's, which cut the whole token array this way.
    """
    read = shard_reader(shards)
    counts = shard_counts(shards)
    # Shards too short for two windows hold < 2 * sequence_length tokens: left out (the last one, at most).
    usable = [index for index, count in enumerate(counts) if _windows_per_epoch(count, sequence_length) > 0]
    windows = sum(_windows_per_epoch(counts[index], sequence_length) for index in usable)
    num_shards = len(usable)
    usable = tf.constant(usable, tf.int64)
    positions = tf.range(sequence_length + 1, dtype=tf.int64)
    first_window = start_step * batch_size
    first_epoch, skip = divmod(first_window, windows)

    def shard_windows(epoch, index):
        ids = read(index)
        num_tokens = tf.shape(ids, out_type=tf.int64)[0]
        count = (num_tokens - 1) // sequence_length
        count = tf.where(count >= 2, count - 1, count)  # _windows_per_epoch, in the graph
        slack = num_tokens - 1 - count * sequence_length  # >= 0; the offset's range
        key = tf.stack([tf.cast(seed, tf.int64), epoch if num_shards == 1 else epoch * len(counts) + index])
        offset = tf.random.stateless_uniform([], key, 0, slack + 1, dtype=tf.int64)
        starts = tf.random.experimental.stateless_shuffle(offset + sequence_length * tf.range(count, dtype=tf.int64), key)
        window = tf.gather(ids, starts[:, None] + positions[None, :])  # (count, S + 1)
        return tf.data.Dataset.from_tensor_slices((window[:, :-1], window[:, 1:]))

    def epoch_windows(epoch):
        order = usable if num_shards == 1 else tf.random.experimental.stateless_shuffle(usable, tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).interleave(
            lambda index: shard_windows(epoch, index),
            cycle_length=min(SHUFFLE_SHARDS, num_shards),
            block_length=1,
        )

    dataset = (
        tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
        .flat_map(epoch_windows)
        .skip(skip)
        .batch(batch_size, drop_remainder=True)
    )
    if num_steps is not None:
        dataset = dataset.take(num_steps)
    return dataset.prefetch(_PIPELINE_PREFETCH).with_options(_fixed_pipeline_options())


# Shards whose windows one epoch interleaves: the training batches mix SHUFFLE_SHARDS * 4M tokens
# of text, and at most this many shards' windows are in memory (~16 MB each as int32).
SHUFFLE_SHARDS = 4


def _fixed_pipeline_options():
    """tf.data options for the per-step training and validation pipelines.

    With tf.data's autotuning on (its default), whole 250-step segments ran at exactly 41.0 ms
    per step instead of ~23 on this 2-core machine, each time the pipeline was re-created
    between evaluations; with it off, every segment ran at ~23 (BENCHMARKS.md). The pipelines
    are cheap reads and index gathers, so a small fixed prefetch buffer loses nothing.

    Sharding across workers is DATA, never FILE: under tf.distribute every worker runs the whole
    pipeline; each global batch (--batch_size) is split into one slice per replica, in order, and
    each worker keeps its own replicas' slices. Global batch k under N workers therefore holds
    exactly the windows of batch k on one device, so batches stay a function of (seed, step)
    whatever the strategy and number of workers: a resumed run sees the same data, and mirrored
    training computes the loss the default strategy does. AUTO would shard by FILE wherever the
    pipeline reads token files, giving each worker other windows than that.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


# Buffering of the training / validation pipelines (autotuning is off).
_PIPELINE_PREFETCH = 2


def evaluation_dataset(shards, sequence_length, batch_size, max_batches=0):
    """Non-overlapping windows over the whole text, in order: every token is predicted once.

    `shards` as for language_model_dataset; windows do not cross shards. Batches are full (a
    ragged last batch would cost a second XLA compilation), so up to batch_size - 1 windows at the
    end are left out.
    """
    read = shard_reader(shards)
    counts = shard_counts(shards)
    num_windows = sum((count - 1) // sequence_length for count in counts if count > 0)
    batch_size = min(batch_size, num_windows)
    positions = tf.range(sequence_length + 1, dtype=tf.int64)

    def shard_windows(index):
        ids = read(index)
        count = (tf.shape(ids, out_type=tf.int64)[0] - 1) // sequence_length
        window = tf.gather(ids, sequence_length * tf.range(count, dtype=tf.int64)[:, None] + positions[None, :])
        return tf.data.Dataset.from_tensor_slices((window[:, :-1], window[:, 1:]))

    num_batches = num_windows // batch_size if batch_size else 0
    if max_batches:
        num_batches = min(num_batches, max_batches)
    dataset = (
        tf.data.Dataset.range(len(counts))
        .flat_map(shard_windows)
        .batch(batch_size, drop_remainder=True)
        .take(num_batches)
        # Keras evaluates a dataset of known length without a "ran out of data" warning.
        .apply(tf.data.experimental.assert_cardinality(num_batches))
    )
    return dataset.prefetch(_PIPELINE_PREFETCH).with_options(_fixed_pipeline_options())
