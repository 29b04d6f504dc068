"""Raw text files -> token ids -> tf.data pipelines of (inputs, targets) windows.

Reading checks everything a user can get wrong (missing path, directory, not UTF-8, empty) and
says where. Training windows are a pure function of (seed, step), so a resumed run sees exactly
the batches the interrupted run would have seen.
"""

import os

import numpy as np
import tensorflow as tf

from keraslm import tables
from keraslm.errors import InvalidInputError
from keraslm.files import read_utf8
from keraslm.tokenizers import text_chunks

# nanoGPT's convention: without --valid_data, the last 10% of the text is held out.
VALIDATION_FRACTION = 0.1


def read_text_file(path, flag="--train_data"):
    """Returns the whole file as str, or raises an error naming the flag, file and position."""
    text = read_utf8(path, flag, "a UTF-8 text file")
    if not text.strip():
        raise InvalidInputError(f"{flag}={path} is empty (no text besides whitespace); give a file with text")
    return text


def is_table(path):
    """A CSV, TSV or JSONL file (optionally .gz), by its name."""
    name = path[:-3] if path.endswith(".gz") else path
    return os.path.splitext(name)[1].lower() in (".csv", ".tsv", ".jsonl", ".json")


def split_paths(paths):
    """'a.txt,b.jsonl.gz' -> ['a.txt', 'b.jsonl.gz'] (a repeated flag arrives joined by commas)."""
    return [path.strip() for path in paths.split(",") if path.strip()]


def read_corpus(paths, flag="--train_data", text_column=""):
    """The raw text of one or more files (comma-separated), read as one corpus.

    A plain UTF-8 text file (optionally .gz) is taken as it is; a CSV, TSV or JSONL file
    (optionally .gz) gives its text column (--text_column, or a guessed one), one example per
    line, labels ignored. Files are joined with a line break between them.
    """
    names = split_paths(paths)
    if not names:
        raise InvalidInputError(f"{flag} is empty; give the path of a UTF-8 text file (or a CSV/TSV/JSONL file)")
    parts = []
    for path in names:
        if is_table(path):
            texts = tables.read_table(path, flag, text_column, labelled=False).texts
            parts.append("\n".join(text.strip("\n") for text in texts) + "\n")
        else:
            parts.append(read_text_file(path, flag))
    return "\n".join(part.rstrip("\n") for part in parts) + "\n" if len(parts) > 1 else parts[0]


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


def check_long_enough(ids, sequence_length, what, path):
    """A language-model window needs sequence_length + 1 tokens."""
    if len(ids) < sequence_length + 1:
        # "--train_data=a.txt" for a flag, "validation text a.txt" otherwise.
        source = f"{what}={path}" if what.startswith("--") else f"{what} {path}"
        raise InvalidInputError(
            f"{source} has {len(ids)} tokens, fewer than --sequence_length={sequence_length} + 1; "
            "use a longer text or a smaller --sequence_length"
        )


def _windows_per_epoch(num_tokens, sequence_length):
    """Windows of length+1 with stride length; one stride of slack lets each epoch start elsewhere."""
    count = (num_tokens - 1) // sequence_length
    return count - 1 if count >= 2 else count


def steps_per_epoch(num_tokens, sequence_length, batch_size):
    return max(1, _windows_per_epoch(num_tokens, sequence_length) // batch_size)


def language_model_dataset(ids, sequence_length, batch_size, seed, start_step=0, num_steps=None):
    """Shuffled (inputs, targets) batches of int32 [batch_size, sequence_length].

    Each epoch cuts the token stream into windows of sequence_length + 1 at a random offset and
    shuffles them; epochs follow each other without a gap. Everything is stateless random keyed by
    (seed, epoch), so batch number k is the same whether or not the run was interrupted before it.
    """
    ids = tf.constant(ids, tf.int32)
    num_tokens = int(ids.shape[0])
    windows = _windows_per_epoch(num_tokens, sequence_length)
    slack = num_tokens - 1 - windows * sequence_length  # >= 0; the offset's range
    first_window = start_step * batch_size
    first_epoch, skip = divmod(first_window, windows)

    def epoch_starts(epoch):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        offset = tf.random.stateless_uniform([], epoch_seed, 0, slack + 1, dtype=tf.int64)
        starts = offset + sequence_length * tf.range(windows, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(starts, epoch_seed))

    dataset = (
        tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
        .flat_map(epoch_starts)
        .skip(skip)
        .batch(batch_size, drop_remainder=True)
    )
    if num_steps is not None:
        dataset = dataset.take(num_steps)
    dataset = dataset.map(_window_pairs(ids, sequence_length), num_parallel_calls=_PIPELINE_PARALLELISM)
    return dataset.prefetch(_PIPELINE_PREFETCH).with_options(_fixed_pipeline_options())


def _fixed_pipeline_options():
    """tf.data options for the per-step training and validation pipelines.

    With tf.data's autotuning on (its default), whole 250-step segments ran at exactly 41.0 ms
    per step instead of ~23 on this 2-core machine, each time the pipeline was re-created
    between evaluations; with it off, every segment ran at ~23 (BENCHMARKS.md). The pipelines
    are cheap index gathers, so fixed parallelism and a small prefetch buffer lose nothing.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return options


# Parallelism and buffering of the training / validation pipelines (autotuning is off).
_PIPELINE_PARALLELISM = 2
_PIPELINE_PREFETCH = 2


def _window_pairs(ids, sequence_length):
    """A map function: window start offsets (B,) -> (inputs, targets), each (B, sequence_length)."""
    positions = tf.range(sequence_length + 1, dtype=tf.int64)

    def gather(starts):
        window = tf.gather(ids, starts[:, None] + positions[None, :])  # (B, S + 1)
        return window[:, :-1], window[:, 1:]

    return gather


def evaluation_dataset(ids, sequence_length, batch_size, max_batches=0):
    """Non-overlapping windows over the whole text, in order: every token is predicted once.

    Batches are full (a ragged last batch would cost a second XLA compilation), so up to
    batch_size - 1 windows at the end are left out.
    """
    ids = tf.constant(ids, tf.int32)
    num_windows = (int(ids.shape[0]) - 1) // sequence_length
    batch_size = min(batch_size, num_windows)
    starts = sequence_length * tf.range(num_windows, dtype=tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices(starts).batch(batch_size, drop_remainder=True)
    if max_batches:
        dataset = dataset.take(max_batches)
    dataset = dataset.map(_window_pairs(ids, sequence_length), num_parallel_calls=_PIPELINE_PARALLELISM)
    return dataset.prefetch(_PIPELINE_PREFETCH).with_options(_fixed_pipeline_options())
