"""Reading text files with clear errors, streaming corpora, token shards, and the training /
validation pipelines."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from keraslm import corpus as corpus_lib, data, token_store
from keraslm.config import TokenizerConfig
from keraslm.errors import InputNotFoundError, InvalidInputError
from keraslm.tokenizers import text_chunks, train_tokenizer


def test_reads_utf8_and_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff今天 hello\n".encode("utf-8"))
    assert data.read_text_file(str(path)) == "今天 hello\n"


def test_a_corpus_of_several_files_text_and_tables(tmp_path):
    """Plain text (gzipped too) as it is; a table's text column, one example per line; joined."""
    import gzip
    import json

    (tmp_path / "a.txt").write_text("First line.\nSecond line.\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as file:
        file.write("压缩的文字")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as file:
        for text in ("A review.<br />Two lines", "Another"):
            file.write(json.dumps({"text": text, "label": "pos"}) + "\n")
    (tmp_path / "d.tsv").write_text("id\tsentence\n1\tfrom a tsv\n", encoding="utf-8")
    paths = ",".join(str(tmp_path / name) for name in ("a.txt", "b.txt.gz", "c.jsonl.gz", "d.tsv"))
    assert data.read_corpus(paths) == (
        "First line.\nSecond line.\n压缩的文字\nA review.<br />Two lines\nAnother\nfrom a tsv\n"
    )
    # One plain file is read exactly as it is.
    assert data.read_corpus(str(tmp_path / "b.txt.gz")) == "压缩的文字"
    with pytest.raises(InvalidInputError, match=r"--train_data=.*d\.tsv: line 1 \(header\) has no column 'body'"):
        data.read_corpus(str(tmp_path / "d.tsv"), text_column="body")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(InvalidInputError, match=r"bad\.txt\.gz: not a complete gzip file"):
        data.read_corpus(f"{tmp_path / 'a.txt'},{tmp_path / 'bad.txt.gz'}")


def test_missing_file_names_the_flag_and_path(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"--valid_data=.*nope\.txt: no such file"):
        data.read_text_file(str(tmp_path / "nope.txt"), "--valid_data")


def test_directory_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="is a directory"):
        data.read_text_file(str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \n"])
def test_empty_file_is_refused(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="is empty"):
        data.read_text_file(str(path))


def test_non_utf8_names_line_column_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"line one\nline two\ncaf\xe9 au lait\n")
    with pytest.raises(InvalidInputError, match=r"line 3, column 4 \(byte offset 21\): byte 0xe9"):
        data.read_text_file(str(path))


def test_validation_split_is_the_last_tenth():
    train, valid = data.split_for_validation("a" * 90 + "b" * 10)
    assert train == "a" * 90 and valid == "b" * 10


def _batches(ids, **kwargs):
    return [(x.numpy(), y.numpy()) for x, y in data.language_model_dataset(ids, **kwargs)]


def test_windows_are_shifted_pairs_from_the_text():
    ids = np.arange(1000, dtype=np.int32)
    for x, y in _batches(ids, sequence_length=16, batch_size=4, seed=1, num_steps=30):
        assert x.shape == y.shape == (4, 16)
        np.testing.assert_array_equal(y, x + 1)  # targets are the next tokens
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # each window is a contiguous slice


def test_one_epoch_covers_the_text_once_and_epochs_differ():
    ids = np.arange(1 + 16 * 40, dtype=np.int32)
    # 40 strides of 16 tokens: 39 windows per epoch, so 13 batches of 3.
    batches = _batches(ids, sequence_length=16, batch_size=3, seed=3, num_steps=26)
    first_epoch = np.concatenate([x[:, 0] for x, _ in batches[:13]])
    second_epoch = np.concatenate([x[:, 0] for x, _ in batches[13:]])
    assert len(set(first_epoch)) == 39 and len(set(np.diff(np.sort(first_epoch)))) == 1
    assert not np.array_equal(first_epoch, second_epoch)


def test_resuming_at_step_k_replays_the_same_batches():
    ids = np.random.default_rng(0).integers(2, 60, 5000).astype(np.int32)
    full = _batches(ids, sequence_length=32, batch_size=8, seed=5, num_steps=60)
    resumed = _batches(ids, sequence_length=32, batch_size=8, seed=5, start_step=37, num_steps=23)
    assert len(full) == 60 and len(resumed) == 23
    for (x_full, y_full), (x_resumed, y_resumed) in zip(full[37:], resumed):
        np.testing.assert_array_equal(x_full, x_resumed)
        np.testing.assert_array_equal(y_full, y_resumed)
    other_seed = _batches(ids, sequence_length=32, batch_size=8, seed=6, num_steps=1)
    assert not np.array_equal(other_seed[0][0], full[0][0])


def test_evaluation_covers_the_held_out_text_in_order():
    ids = np.arange(1 + 8 * 10, dtype=np.int32)
    batches = [(x.numpy(), y.numpy()) for x, y in data.evaluation_dataset(ids, sequence_length=8, batch_size=5)]
    x = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(x.reshape(-1), np.arange(80))


def test_too_short_for_a_window_names_the_flag():
    with pytest.raises(InvalidInputError, match=r"--train_data=data.txt has 10 tokens.*--sequence_length=64"):
        data.check_long_enough(10, 64, "--train_data", "data.txt")


# === Streaming corpora (keraslm.corpus) ===

# Line breaks of every kind, "\r\n" among them, and text without a final break.
_AWKWARD = "one\r\ntwo\rthree\n\nfour\u2028five\x0csix 七八九\r\n" * 700 + "last line without a break"


def test_streamed_chunks_are_splitlines_chunks_whatever_the_block_size(tmp_path, monkeypatch):
    path = tmp_path / "awkward.txt"
    path.write_bytes(_AWKWARD.encode("utf-8"))
    for block_bytes in (1, 7, 4096, 1 << 20):
        monkeypatch.setattr(corpus_lib, "_BLOCK_BYTES", block_bytes)
        corpus = corpus_lib.open_corpus(str(path))
        assert corpus.num_characters == len(_AWKWARD)
        assert list(corpus_lib.chunks(corpus.text())) == text_chunks(_AWKWARD), block_bytes
        assert "".join(corpus.text(100, 2345)) == _AWKWARD[100:2345]


def test_a_text_on_one_line_is_cut_into_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_lib, "_BLOCK_BYTES", 1000)
    text = "word " * 200_000 + "\r\n" + "x" * 70_000  # 1M characters without a line break, then 70K
    path = tmp_path / "one-line.txt"
    path.write_text(text, encoding="utf-8", newline="")
    pieces = list(corpus_lib.chunks(corpus_lib.open_corpus(str(path)).text(), max_characters=65_536))
    assert "".join(pieces) == text
    assert max(map(len, pieces)) == 65_536 and len(pieces) == 18


def test_several_files_and_globs_are_one_corpus_counted_as_read(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_lib, "_BLOCK_BYTES", 5)
    (tmp_path / "part-1.txt").write_text("first\n\n\n", encoding="utf-8")
    (tmp_path / "part-2.txt").write_text("second\nthird", encoding="utf-8")
    (tmp_path / "extra.txt").write_text("\n\nextra\n", encoding="utf-8")
    paths = f"{tmp_path}/part-*.txt,{tmp_path / 'extra.txt'}"
    corpus = corpus_lib.open_corpus(paths)
    assert corpus.files == [str(tmp_path / name) for name in ("part-1.txt", "part-2.txt", "extra.txt")]
    text = "".join(corpus.text())
    assert text == "first\nsecond\nthird\n\n\nextra\n" == data.read_corpus(paths)
    assert corpus.num_characters == len(text)
    with pytest.raises(InputNotFoundError, match=r"--valid_data=.*nothing-\*\.txt: the pattern matches no file"):
        corpus_lib.open_corpus(f"{tmp_path}/nothing-*.txt", "--valid_data")


def test_a_bad_byte_in_a_later_block_is_placed_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_lib, "_BLOCK_BYTES", 4)
    path = tmp_path / "latin1.txt"
    path.write_bytes("\ufeffline one\nlíne two\ncaf".encode("utf-8") + b"\xe9 au lait\n")
    with pytest.raises(InvalidInputError, match=r"line 3, column 4 \(byte offset 25\): byte 0xe9"):
        corpus_lib.open_corpus(str(path))


def test_the_tokenizer_sample_is_bounded_and_spread_over_the_text(tmp_path):
    text = "".join(f"line {index}\n" for index in range(100_000))
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    corpus = corpus_lib.open_corpus(str(path))
    assert corpus_lib.sample(corpus, 0, len(text), limit=len(text)) == text
    sample = corpus_lib.sample(corpus, 0, len(text), limit=100_000)
    assert 50_000 < len(sample) <= 110_000
    assert sample.startswith("line 0\n") and int(sample.splitlines()[-1].split()[1]) > 95_000


# === Token shards (keraslm.token_store) ===


def _char_tokenizer(text, directory):
    return train_tokenizer(TokenizerConfig(tokenizer="char"), text, str(directory))


def test_shards_hold_the_tokens_of_the_whole_text(tmp_path, monkeypatch):
    monkeypatch.setattr(token_store, "SHARD_TOKENS", 5000)
    monkeypatch.setattr(token_store, "_CHUNKS_PER_BATCH", 2)  # shards end between tokenizer calls
    path = tmp_path / "text.txt"
    path.write_text(_AWKWARD, encoding="utf-8")
    tokenizer = _char_tokenizer(_AWKWARD, tmp_path / "tokenizer")
    corpus = corpus_lib.open_corpus(str(path))
    store = token_store.write(str(tmp_path / "tokens"), corpus, 0, corpus.num_characters, tokenizer, verbose=False)
    assert len(store.files) > 2 and store.dtype == "uint16"
    np.testing.assert_array_equal(store.read_all(), data.tokenize_text(tokenizer, _AWKWARD))
    # A complete store is reused as it is.
    assert token_store.write(store.directory, corpus, 0, corpus.num_characters, tokenizer, verbose=False) == store
    # A truncated or deleted shard is noticed (not fed to training) and the store is rebuilt.
    for harm in (lambda path: os.truncate(path, 1001), os.remove):
        harm(os.path.join(store.directory, store.files[1]))
        assert token_store.load(store.directory) is None
        rebuilt = token_store.write(store.directory, corpus, 0, corpus.num_characters, tokenizer, verbose=False)
        np.testing.assert_array_equal(rebuilt.read_all(), data.tokenize_text(tokenizer, _AWKWARD))


_KILLED_WRITER = """
import sys
from keraslm import corpus, token_store
from keraslm.tokenizers import load_tokenizer
token_store.SHARD_TOKENS = 20_000
token_store._CHUNKS_PER_BATCH = 4
text = corpus.open_corpus(sys.argv[1])
print("started", flush=True)
token_store.write(sys.argv[2], text, 0, text.num_characters, load_tokenizer(sys.argv[3]), verbose=False)
"""


def test_tokenizing_killed_with_sigkill_resumes_after_its_last_shard(tmp_path):
    """A real `kill -9` of a tokenizing process; the rerun keeps its shards and ends with the same tokens."""
    text = "".join(f"{index} {_AWKWARD[index % 500 : index % 500 + 40]}\n" for index in range(60_000))
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    tokenizer = _char_tokenizer(text, tmp_path / "tokenizer")
    directory = tmp_path / "tokens"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(directory), str(tmp_path / "tokenizer")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (directory / "progress.json").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (directory / "manifest.json").exists(), "finished before the kill: make the text longer"
    kept = json.loads((directory / "progress.json").read_text())["files"]
    assert kept
    before = {name: (directory / name).stat().st_mtime_ns for name in kept}
    corpus = corpus_lib.open_corpus(str(path))
    store = token_store.write(str(directory), corpus, 0, corpus.num_characters, tokenizer, verbose=False)
    assert {name: (directory / name).stat().st_mtime_ns for name in kept} == before  # not written again
    assert len(store.files) > len(kept)
    np.testing.assert_array_equal(store.read_all(), data.tokenize_text(tokenizer, text))


def _reference_batches(ids, sequence_length, batch_size, seed, num_steps):
    """keraslm 0.2's training batches (one in-memory token array), kept to check the shards against."""
    windows = data._windows_per_epoch(len(ids), sequence_length)  # pylint: disable=protected-access
    slack = len(ids) - 1 - windows * sequence_length
    starts = []
    epoch = 0
    while len(starts) < batch_size * num_steps:
        key = tf.constant([seed, epoch], tf.int64)
        offset = tf.random.stateless_uniform([], key, 0, slack + 1, dtype=tf.int64)
        epoch_starts = offset + sequence_length * tf.range(windows, dtype=tf.int64)
        starts.extend(tf.random.experimental.stateless_shuffle(epoch_starts, key).numpy().tolist())
        epoch += 1
    batches = []
    for step in range(num_steps):
        window = np.stack([ids[start : start + sequence_length + 1] for start in starts[step * batch_size : (step + 1) * batch_size]])
        batches.append((window[:, :-1], window[:, 1:]))
    return batches


def test_a_corpus_in_one_shard_gives_the_batches_of_keraslm_0_2(tmp_path):
    """Streaming from a shard file gives exactly the batches the in-memory pipeline gave."""
    ids = np.random.default_rng(1).integers(1, 300, 3000).astype(np.int32)
    (tmp_path / "shard-00000.bin").write_bytes(ids.astype("<u2").tobytes())
    store = token_store.TokenShards(str(tmp_path), ["shard-00000.bin"], [len(ids)], "uint16")
    expected = _reference_batches(ids, 16, 8, seed=11, num_steps=50)  # 50 steps: past 2 epochs
    for source in (store, ids):
        got = _batches(source, sequence_length=16, batch_size=8, seed=11, num_steps=50)
        for (x, y), (x_expected, y_expected) in zip(got, expected, strict=True):
            np.testing.assert_array_equal(x, x_expected)
            np.testing.assert_array_equal(y, y_expected)


def _shards(tmp_path, ids, sizes):
    files, start = [], 0
    for index, size in enumerate(sizes):
        name = f"shard-{index:05d}.bin"
        (tmp_path / name).write_bytes(ids[start : start + size].astype("<i4").tobytes())
        files.append(name)
        start += size
    return token_store.TokenShards(str(tmp_path), files, list(sizes), "int32")


def test_many_shards_cover_every_shard_each_epoch_and_resume_exactly(tmp_path):
    ids = np.arange(6 * 500 + 7, dtype=np.int32)
    store = _shards(tmp_path, ids, [500] * 6 + [7])  # the 7-token shard is too short: left out
    # 500 tokens, stride 10: 48 windows per shard per epoch; 6 shards: 288 windows, 36 batches of 8.
    batches = _batches(store, sequence_length=10, batch_size=8, seed=2, num_steps=72)
    first = np.concatenate([x[:, 0] for x, _ in batches[:36]])
    second = np.concatenate([x[:, 0] for x, _ in batches[36:]])
    for epoch in (first, second):
        assert len(set(epoch)) == 288
        assert sorted(set(epoch // 500)) == [0, 1, 2, 3, 4, 5]
        assert all(np.bincount(epoch // 500) == 48)
    for x, y in batches:
        np.testing.assert_array_equal(y, x + 1)
        assert (x[:, 0] // 500 == x[:, -1] // 500).all() and (x[:, -1] % 500 < 499).all()  # within one shard
    # Batches mix shards (SHUFFLE_SHARDS interleaved), and epochs differ.
    assert max(len(set(x[:, 0] // 500)) for x, _ in batches) > 1
    assert not np.array_equal(first, second)
    resumed = _batches(store, sequence_length=10, batch_size=8, seed=2, start_step=41, num_steps=20)
    for (x, y), (x_full, y_full) in zip(resumed, batches[41:61], strict=True):
        np.testing.assert_array_equal(x, x_full)


def test_evaluation_reads_every_shard_in_order(tmp_path):
    ids = np.arange(3 * 81, dtype=np.int32)
    store = _shards(tmp_path, ids, [81, 81, 81])
    batches = [(x.numpy(), y.numpy()) for x, y in data.evaluation_dataset(store, sequence_length=8, batch_size=5)]
    x = np.concatenate([x for x, _ in batches])
    # 10 windows per shard, 30 in all: 6 batches of 5, every token of each shard predicted once.
    assert len(batches) == 6
    np.testing.assert_array_equal(x.reshape(-1), np.concatenate([np.arange(80) + 81 * index for index in range(3)]))
