"""Reading text files with clear errors, and the training / validation pipelines."""

import numpy as np
import pytest

from keraslm import data
from keraslm.errors import InputNotFoundError, InvalidInputError


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
        data.check_long_enough(np.arange(10), 64, "--train_data", "data.txt")
