"""Labelled tables: CSV / TSV / JSONL (optionally gzipped) read with errors that name the file and line."""

import gzip
import json
import re

import numpy as np
import pytest

from conftest import REPO
from keraslm import tables
from keraslm.errors import InputNotFoundError, InvalidInputError

WAIMAI = REPO / "data" / "waimai10k" / "waimai_10k.csv"


def _write(path, text, gzipped=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    if gzipped:
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("a.csv", 'label,text\npos,"good, really"\nneg,"bad\nand long"\npos,fine\n'),
        ("a.tsv", "label\tsentence\npos\tgood, really\nneg\tbad and long\npos\tfine\n"),
        ("a.jsonl", "\n".join(json.dumps(row) for row in [
            {"text": "good, really", "label": "pos"}, {"text": "bad and long", "label": "neg"}, {"text": "fine", "label": "pos"}
        ]) + "\n"),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_each_format_reads_texts_labels_and_lines(tmp_path, name, content, gzipped):
    path = _write(tmp_path / (name + (".gz" if gzipped else "")), content, gzipped)
    table = tables.read_table(path, "--train_data")
    assert table.labels == ["pos", "neg", "pos"]
    assert table.texts[0] == "good, really" and table.texts[2] == "fine"
    # A quoted CSV field over two lines keeps the line it starts on; the next row is line 5.
    assert table.lines == ([2, 3, 5] if name.endswith("csv") else [2, 3, 4] if name.endswith("tsv") else [1, 2, 3])
    assert tables.label_vocabulary(table) == ["neg", "pos"]


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 2, 10, 1])]
    path = _write(tmp_path / "n.jsonl", "\n".join(map(json.dumps, rows)))
    table = tables.read_table(path)
    assert tables.label_vocabulary(table) == ["1", "2", "10"]
    assert tables.label_ids(table, ["1", "2", "10"], "--train_data").tolist() == [2, 1, 1, 2, 0]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("m.csv", "label,body,note\n1,x,y\n", "cannot tell which column holds the text (columns: label, body, note); pass --text_column"),
        ("m.csv", "stars,text\n1,x\n", "line 1 (header) has no column 'label' (columns: stars, text); pass --label_column"),
        ("r.tsv", "label\ttext\n1\tfine\n0\ttoo\tmany\n", "line 3 has 3 fields but the header has 2"),
        ("e.csv", "label,text\n1,fine\n0,   \n", "line 3: the text is empty"),
        ("l.csv", "label,text\n1,fine\n,blank label\n", "line 3: the 'label' field is empty or missing"),
        ("j.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', "line 2 is a JSON array, not an object"),
        ("j.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', "line 2 is not valid JSON"),
        ("j.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "stars": 1}\n', "line 2 has no 'label' field (fields: text, stars)"),
        ("x.txt", "label,text\n1,a\n", "cannot tell the format from the name; use a .csv, .tsv or .jsonl file"),
        ("h.csv", "", "is empty; it needs a header row"),
        ("o.csv", "label,text\n", "has no examples"),
    ],
)
def test_bad_tables_name_the_file_and_line(tmp_path, name, content, expected):
    path = _write(tmp_path / name, content)
    with pytest.raises(InvalidInputError) as error:
        tables.read_table(path, "--train_data")
    assert str(error.value).startswith(f"--train_data={path}")
    assert expected in str(error.value)


def test_a_byte_that_is_not_utf8_names_its_line(tmp_path):
    path = _write(tmp_path / "b.csv", b"label,text\n1,fine\n0,caf\xe9\n")
    with pytest.raises(InvalidInputError, match=r"line 3, column 6 \(byte offset 23\): byte 0xe9 is not valid UTF-8"):
        tables.read_table(path, "--valid_data")


def test_missing_file_and_unseen_and_single_labels(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such file"):
        tables.read_table(str(tmp_path / "absent.csv"))
    train = tables.read_table(_write(tmp_path / "t.csv", "label,text\na,x\nb,y\n"))
    valid = tables.read_table(_write(tmp_path / "v.csv", "label,text\na,x\nc,z\n"), "--valid_data")
    with pytest.raises(InvalidInputError, match=r"--valid_data=.*v.csv: line 3: label 'c' does not occur in the training data \(labels: a, b\)"):
        tables.label_ids(valid, tables.label_vocabulary(train), "--valid_data")
    single = tables.read_table(_write(tmp_path / "s.csv", "label,text\na,x\na,y\n"))
    with pytest.raises(InvalidInputError, match="a classifier needs at least two classes"):
        tables.label_vocabulary(single)


def test_the_stratified_split_is_seeded_and_keeps_class_shares():
    # waimai10k is sorted by label (positives first): the split must shuffle.
    table = tables.read_table(str(WAIMAI))
    labels = np.array(table.labels)
    keep, held_out = tables.stratified_split(table.labels, 0.1, seed=5)
    again, held_out_again = tables.stratified_split(table.labels, 0.1, seed=5)
    assert held_out.tolist() == held_out_again.tolist() and keep.tolist() == again.tolist()
    assert not set(keep) & set(held_out) and len(keep) + len(held_out) == len(labels)
    for label in ("0", "1"):
        share = (labels[held_out] == label).sum() / (labels == label).sum()
        assert abs(share - 0.1) < 0.002
    other, _ = tables.stratified_split(table.labels, 0.1, seed=6)
    assert other.tolist() != keep.tolist()


def _padded_rows(count, seed):
    generator = np.random.default_rng(seed)
    lengths = generator.integers(1, 40, size=count)
    ids = np.zeros([count, 40], np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = generator.integers(2, 50, size=length)
        ids[row, 0] = 2 + row  # Tells which example a batch row is.
    return ids, (np.arange(count) % 3).astype(np.int32)


def test_classification_batches_depend_only_on_seed_and_step():
    ids, labels = _padded_rows(500, seed=0)
    full = [(x.numpy(), y.numpy()) for x, y in tables.classification_dataset(ids, labels, 16, seed=3, num_steps=70)]
    resumed = [(x.numpy(), y.numpy()) for x, y in tables.classification_dataset(ids, labels, 16, seed=3, start_step=40, num_steps=30)]
    assert len(full) == 70 and len(resumed) == 30
    for (x, y), (resumed_x, resumed_y) in zip(full[40:], resumed):
        np.testing.assert_array_equal(x, resumed_x)
        np.testing.assert_array_equal(y, resumed_y)
    other_seed = next(iter(tables.classification_dataset(ids, labels, 16, seed=4)))[1].numpy()
    assert not np.array_equal(other_seed, full[0][1])


def test_classification_batches_cover_each_example_once_per_epoch_and_trim_padding():
    ids, labels = _padded_rows(480, seed=1)
    lengths = (ids != 0).sum(axis=1)
    rows_seen, widths = [], []
    # 480 examples in batches of 16: one epoch is 30 batches.
    for x, y in tables.classification_dataset(ids, labels, 16, seed=5, num_steps=30):
        x = x.numpy()
        longest = int((x != 0).sum(axis=1).max())
        # Cut to the longest text, rounded up to a multiple of 8 below 64 tokens (at most the full width).
        assert x.shape[1] == min(40, -(-longest // 8) * 8)
        widths.append(x.shape[1])
        for row in x:
            example = int(row[0]) - 2
            np.testing.assert_array_equal(row, ids[example, : x.shape[1]])
            assert lengths[example] <= x.shape[1]
            rows_seen.append(example)
    assert sorted(rows_seen) == list(range(480))
    # Length buckets: most batches are much narrower than the longest text of the whole set.
    assert np.median(widths) < 40


@pytest.mark.parametrize("longest, width", [(1, 8), (8, 8), (9, 16), (64, 64), (65, 96), (256, 256), (257, 384), (390, 400)])
def test_batches_are_cut_to_a_few_widths(longest, width):
    ids = np.zeros([3, 400], np.int32)
    ids[1, :longest] = 5
    assert tables.trim_padding(ids).shape == (3, width)


def test_numeric_labels_are_the_same_label_in_every_format(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\ngood,1.0\nbad,0\nfine,1\nmeh,+1e0\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": "0.0"}\n', encoding="utf-8")
    assert tables.read_table(str(tmp_path / "a.csv")).labels == ["1", "0", "1", "1"]
    assert tables.read_table(str(tmp_path / "b.jsonl")).labels == ["1", "0"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("q.csv", 'label,review\n1,"good\n0,bad\n1,ok\n', "line 2: a quoted field (\") opened in this row is never closed"),
        ("d.csv", "label,review,review\n1,a,b\n", "names the column 'review' more than once"),
        ("s.csv", "label,text\n1,a\n", "--text_column and --label_column both name 'label'"),
        ("n.jsonl", '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n', "line 2: the 'text' field is null"),
    ],
)
def test_more_bad_tables(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    text_column = "label" if name == "s.csv" else ""
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        tables.read_table(str(tmp_path / name), "--train_data", text_column)


def test_long_fields_and_truncated_gzip(tmp_path):
    (tmp_path / "long.tsv").write_text("text\tlabel\n" + "x" * 200_000 + "\t1\n", encoding="utf-8")
    assert len(tables.read_table(str(tmp_path / "long.tsv")).texts[0]) == 200_000
    data = gzip.compress(b"text,label\n" + b"good,1\n" * 1000)
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=re.escape("cut.csv.gz: not a complete gzip file")):
        tables.read_table(str(tmp_path / "cut.csv.gz"))


def test_a_label_column_of_texts_is_named(tmp_path):
    rows = "".join(f"review number {index},{index % 2}\n" for index in range(300))
    (tmp_path / "t.csv").write_text("text,label\n" + rows, encoding="utf-8")
    table = tables.read_table(str(tmp_path / "t.csv"), "--train_data", "label", "text")
    with pytest.raises(InvalidInputError, match="300 different labels in 300 examples; check --label_column"):
        tables.label_vocabulary(table)
