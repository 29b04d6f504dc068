"""A tokenized corpus on disk: shards of token ids, written once, resumable, read by tf.data.

Tokenizing a large corpus takes minutes to hours, so it is done once per run and kept in the work
directory (`tokens/<train|valid>-<fingerprint>/`): the fingerprint covers the input files (path,
size, modification time), the character range and the tokenizer, so a resumed run reuses the
shards and a run on changed files or another tokenizer writes new ones.

Each shard is a raw little-endian array of token ids (uint16 when the vocabulary fits, else
int32), about SHARD_TOKENS long and cut between two tokenizing batches, so TensorFlow reads it
with read_file + decode_raw inside the input pipeline: no Python in the training loop, and only
the shards being read are in memory. A shard is written to a temporary name and renamed, then
`progress.json` records it with the number of text chunks consumed so far; a killed tokenizing
process resumes after its last recorded shard. `manifest.json`, written last, marks the store
complete.

Tokenizing runs as a tf.data pipeline: Python reads and cuts the text, and the tokenizer's
TensorFlow ops run on every core in parallel (they release the GIL).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import typing

import keras
import numpy as np
import tensorflow as tf

from keraslm import corpus as corpus_lib
from keraslm.config import write_json_atomic

# Tokens per shard (4 Mi): 8-16 MB on disk, and the unit the training pipeline shuffles within.
SHARD_TOKENS = 1 << 22
# Text chunks (of 256 lines) per tokenizer call.
_CHUNKS_PER_BATCH = 16
_MANIFEST = "manifest.json"
_PROGRESS = "progress.json"


@dataclasses.dataclass
class TokenShards:
    """A complete store: its shard files and their token counts, in corpus order."""

    directory: str
    files: list
    counts: list
    dtype: str  # "uint16" or "int32"

    @property
    def num_tokens(self):
        return sum(self.counts)

    def paths(self):
        return [os.path.join(self.directory, name) for name in self.files]

    def read_all(self):
        """Every token id as one int32 array (for tests and small corpora only)."""
        arrays = [np.fromfile(path, dtype=_disk_dtype(self.dtype)) for path in self.paths()]
        return np.concatenate(arrays).astype(np.int32) if arrays else np.zeros([0], np.int32)


@dataclasses.dataclass
class Storage:
    """Where a task keeps what it prepares: tokens_dir for token stores, tokenizer_dir the run's
    tokenizer (part of their fingerprint). write=False: a worker that is not the chief, which
    waits for the chief's stores instead of writing them."""

    tokens_dir: str
    tokenizer_dir: str
    write: bool = True
    verbose: bool = True
    # write=False: called once per poll while the chief's store is unfinished (it sleeps, and
    # raises when waiting is pointless).
    wait: typing.Optional[typing.Callable[[], None]] = None


def _disk_dtype(name):
    return np.dtype(name).newbyteorder("<")


def store_dtype(vocabulary_size):
    return "uint16" if vocabulary_size <= np.iinfo(np.uint16).max + 1 else "int32"


def fingerprint(corpus, start, stop, tokenizer_dir):
    """A short hash of what the tokens depend on: the input, the character range, the tokenizer."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"corpus": corpus.fingerprint(), "range": [start, stop]}, sort_keys=True).encode())
    for name in sorted(os.listdir(tokenizer_dir)):
        with open(os.path.join(tokenizer_dir, name), "rb") as file:
            digest.update(name.encode() + b"\0" + file.read())
    return digest.hexdigest()[:16]


def load(directory):
    """The complete, intact store in `directory`, or None if it is missing, unfinished or damaged."""
    try:
        with open(os.path.join(directory, _MANIFEST), encoding="utf-8") as file:
            manifest = json.load(file)
        store = TokenShards(directory, manifest["files"], manifest["counts"], manifest["dtype"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if damage(directory, store.files, store.counts, store.dtype) else store


def damage(directory, files, counts, dtype):
    """What is wrong with recorded shards ("shard-00003.bin: 1,000 bytes, not 8,388,608"), or None.

    A shard's size is its token count times the id width: a deleted, truncated or extended shard
    would otherwise feed the pipeline other tokens than the manifest says (or fail mid-training).
    """
    width = np.dtype(dtype).itemsize
    for name, count in zip(files, counts):
        try:
            size = os.path.getsize(os.path.join(directory, name))
        except OSError:
            return f"{name} is missing"
        if size != count * width:
            return f"{name} has {size:,} bytes, not {count * width:,}"
    return None


def _tokenized_batches(tokenizer, chunk_iterator):
    """(flat int32 ids, chunks in the batch) per batch of text chunks, tokenized in parallel."""
    dataset = (
        tf.data.Dataset.from_generator(lambda: chunk_iterator, output_signature=tf.TensorSpec([], tf.string))
        .batch(_CHUNKS_PER_BATCH)
        .map(
            lambda texts: (tokenizer.tokenize(texts).flat_values, tf.size(texts)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
    for ids, count in dataset:
        yield ids.numpy(), int(count)


def _skip(iterator, count):
    for _ in range(count):
        next(iterator)
    return iterator


def write(directory, corpus, start, stop, tokenizer, what="", verbose=True):
    """Tokenizes characters [start, stop) of `corpus` into shards in `directory`; returns the store.

    Resumes an unfinished store left by a killed process (its progress.json), and returns a
    complete one as it is.
    """
    done = load(directory)
    if done:
        return done
    dtype = store_dtype(tokenizer.vocabulary_size)
    os.makedirs(directory, exist_ok=True)
    progress_path = os.path.join(directory, _PROGRESS)
    try:
        with open(progress_path, encoding="utf-8") as file:
            progress = json.load(file)
        problem = damage(directory, progress["files"], progress["counts"], dtype)
    except (OSError, ValueError, KeyError, TypeError):
        progress, problem = None, None
    if problem:
        print(f"keraslm: note: {directory}: {problem}; tokenizing {what or 'the text'} again", file=sys.stderr, flush=True)
        shutil.rmtree(directory, ignore_errors=True)
        progress = None
    if progress is None:
        os.makedirs(directory, exist_ok=True)
        for name in (_MANIFEST, _PROGRESS):
            if os.path.exists(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))
        progress = {"files": [], "counts": [], "chunks": 0, "characters": 0}
    # Files not in progress.json are half-written shards of a killed process.
    for name in os.listdir(directory):
        if name.startswith("shard-") and name not in progress["files"]:
            os.remove(os.path.join(directory, name))
    total = stop - start
    bar = keras.utils.Progbar(total, verbose=1 if verbose and sys.stdout.isatty() else 0, unit_name="char")
    if verbose:
        resumed = f", resuming after {progress['characters']:,} characters" if progress["chunks"] else ""
        print(f"keraslm: tokenizing {what or 'the text'} ({total:,} characters) into {directory}{resumed}", flush=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    chunk_iterator = _skip(corpus_lib.chunks(corpus.text(start, stop)), progress["chunks"])

    # Characters per chunk, to advance the bar: the generator records them as it goes.
    sizes = []

    def counted(iterator):
        for chunk in iterator:
            sizes.append(len(chunk))
            yield chunk

    pending, pending_tokens, characters = [], 0, progress["characters"]
    progress_start = characters
    bar.update(characters)

    def flush():
        nonlocal pending, pending_tokens
        name = f"shard-{len(progress['files']):05d}.bin"
        path = os.path.join(directory, name)
        temporary = f"{path}.tmp-{os.getpid()}"
        np.concatenate(pending).astype(_disk_dtype(dtype)).tofile(temporary)
        os.replace(temporary, path)
        progress["files"].append(name)
        progress["counts"].append(pending_tokens)
        progress["characters"] = characters
        write_json_atomic(progress_path, progress)
        pending, pending_tokens = [], 0

    for ids, count in _tokenized_batches(tokenizer, counted(chunk_iterator)):
        pending.append(ids)
        pending_tokens += len(ids)
        progress["chunks"] += count
        characters += sum(sizes[:count])
        del sizes[:count]
        bar.update(characters)
        if pending_tokens >= SHARD_TOKENS:
            flush()
    if pending_tokens:
        flush()
    write_json_atomic(
        os.path.join(directory, _MANIFEST),
        {"files": progress["files"], "counts": progress["counts"], "dtype": dtype, "characters": characters},
    )
    if verbose:
        seconds = max(time.perf_counter() - started, 1e-9)
        print(
            f"keraslm: {sum(progress['counts']):,} tokens in {len(progress['files'])} shards; "
            f"{(characters - progress_start) / seconds / 1e6:.1f}M characters/s, "
            f"{(time.process_time() - cpu_started) / seconds:.1f} cores busy",
            flush=True,
        )
    return load(directory)


def remove_others(parent, keep):
    """Deletes the stores in `parent` other than the directory names in `keep` (stale data)."""
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        if name not in keep:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


# === Reading in tf.data ===


def shard_reader(shards):
    """A function: shard index (int64 scalar tensor) -> its int32 ids, read inside the pipeline.

    `shards` is a TokenShards, or an in-memory int32 array taken as a single shard.
    """
    if isinstance(shards, TokenShards):
        paths = tf.constant(shards.paths())
        dtype = tf.uint16 if shards.dtype == "uint16" else tf.int32

        def read(index):
            return tf.cast(tf.io.decode_raw(tf.io.read_file(paths[index]), dtype, little_endian=True), tf.int32)

        return read
    ids = tf.constant(shards, tf.int32)
    return lambda index: ids


def shard_counts(shards):
    return list(shards.counts) if isinstance(shards, TokenShards) else [int(len(shards))]
