"""Labelled text tables: CSV, TSV and JSONL files (optionally gzipped) -> (texts, labels).

Every problem a user can have with such a file (missing column, ragged row, empty text, a byte
that is not UTF-8, a JSONL line that is not an object, an unknown label) is an InvalidInputError
naming the flag, the file and the line. The format comes from the file name: `.csv`, `.tsv`,
`.jsonl` (or `.json`), each optionally followed by `.gz`; CSV and TSV need a header row.
keraslm.pairs reads sentence pairs with the same record readers (csv_records, jsonl_objects).
"""

import csv
import dataclasses
import io
import json
import os
import re
import sys

import numpy as np

from keraslm.errors import InvalidInputError
from keraslm.files import read_utf8

FORMATS = ("csv", "tsv", "jsonl")
# Column names tried, in order, when --text_column is empty.
TEXT_COLUMN_GUESSES = ("text", "sentence", "review", "content", "document")
DEFAULT_LABEL_COLUMN = "label"


@dataclasses.dataclass
class Table:
    path: str
    texts: list
    # Labels as strings ("0", "pos"); integers in the file become their decimal form.
    labels: list
    # 1-based line of each example in the file (its first line for a multi-line CSV record).
    lines: list


def table_format(path, flag, formats=FORMATS):
    """The format named by the file's extension (.gz aside; .json is jsonl), one of `formats`."""
    name = path[:-3] if path.endswith(".gz") else path
    extension = os.path.splitext(name)[1].lower().lstrip(".")
    if extension == "json":
        extension = "jsonl"
    if extension not in formats:
        endings = [f".{known}" for known in formats]
        raise InvalidInputError(
            f"{flag}={path}: cannot tell the format from the name; use a {', '.join(endings[:-1])} or {endings[-1]} "
            "file (optionally .gz)"
        )
    return extension


def _label_string(value, where):
    """A label as a string; a number with an integer value is written as that integer, so "1",
    "1.0" and 1 are the same label in every format."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list, float)):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        raise InvalidInputError(f"{where}: the label {json.dumps(value)} is not a string or an integer")
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        number = float(text)
        if number.is_integer():
            return str(int(number))
    return text


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _pick_text_column(columns, text_column, label_column, where):
    if text_column:
        return text_column
    for guess in TEXT_COLUMN_GUESSES:
        if guess in columns:
            return guess
    others = [column for column in columns if column != label_column]
    if len(others) == 1:
        return others[0]
    raise InvalidInputError(
        f"{where}: cannot tell which column holds the text (columns: {', '.join(columns)}); pass --text_column"
    )


def read_table(path, flag="--train_data", text_column="", label_column=DEFAULT_LABEL_COLUMN, labelled=True):
    """Reads every example of a CSV/TSV/JSONL(.gz) file; labelled=False reads only the text column."""
    kind = table_format(path, flag)
    content = read_utf8(path, flag, "a CSV, TSV or JSONL file")
    where = f"{flag}={path}"
    texts, labels, lines = [], [], []

    def add(text, label, line, columns):
        if text is None:
            if text_column in columns:
                raise InvalidInputError(f"{where}: line {line}: the {text_column!r} field is null; give it a text")
            raise InvalidInputError(
                f"{where}: line {line} has no {text_column!r} field (fields: {', '.join(columns)}); "
                "pass --text_column, or give every line that field"
            )
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: line {line}: the text {json.dumps(text)[:40]} is not a string")
        if not text.strip():
            raise InvalidInputError(f"{where}: line {line}: the text is empty; remove the row or fill it in")
        texts.append(text)
        lines.append(line)
        if labelled:
            if label is None or (isinstance(label, str) and not label.strip()):
                raise InvalidInputError(f"{where}: line {line}: the {label_column!r} field is empty or missing")
            labels.append(_label_string(label, f"{where}: line {line}"))

    if kind == "jsonl":
        for number, row in jsonl_objects(content, where, '{"text": "...", "label": "..."}'):
            columns = list(row)
            if not text_column:
                text_column = _pick_text_column(columns, "", label_column, f"{where}: line {number}")
            if labelled and label_column not in row:
                raise InvalidInputError(
                    f"{where}: line {number} has no {label_column!r} field (fields: {', '.join(columns)}); pass --label_column"
                )
            add(row.get(text_column), row.get(label_column), number, columns)
    else:
        records = csv_records(content, kind, where)
        header = csv_header(records, where, "example")
        text_column = _pick_text_column(header, text_column, label_column, f"{where}: line 1 (header)")
        if labelled and text_column == label_column:
            raise InvalidInputError(
                f"--text_column and --label_column both name {text_column!r}; the text and the label must be different columns"
            )
        for name in (text_column, label_column) if labelled else (text_column,):
            if name not in header:
                flag_name = "--text_column" if name == text_column else "--label_column"
                raise InvalidInputError(
                    f"{where}: line 1 (header) has no column {name!r} (columns: {', '.join(header)}); pass {flag_name}"
                )
        text_index, label_index = header.index(text_column), header.index(label_column) if labelled else None
        for first_line, row in records:
            if not row or row == [""]:
                continue
            check_row_length(row, header, first_line, where)
            add(row[text_index], row[label_index] if labelled else None, first_line, header)
    if not texts:
        needs = "one JSON object on a line" if kind == "jsonl" else "one row below the header"
        raise InvalidInputError(f"{where} has no examples; it needs at least {needs}")
    return Table(path, texts, labels, lines)


def jsonl_objects(content, where, example):
    """(line number, dict) for each non-blank line of a JSON lines file; `example` shows a good line
    in the error for a line that is not an object."""
    # split("\n"), not splitlines(): JSON strings may hold U+2028 or U+0085, which splitlines breaks at.
    for number, raw in enumerate(content.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise InvalidInputError(
                f"{where}: line {number} is not valid JSON ({error.msg} at column {error.colno}); "
                "a JSON lines file holds one complete JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise InvalidInputError(
                f"{where}: line {number} is a JSON {_json_kind(row)}, not an object; a JSON lines file holds one "
                f"object per line, such as {example}"
            )
        yield number, row


def csv_records(content, kind, where):
    """(first line, fields) of every record of a CSV or TSV text, blank ones included ([] or [""]).

    CSV is quoted as usual; TSV (and tab-separated .txt) has no quoting, so a quote is text.
    A record's first line is the one it starts on (a quoted CSV field may hold line breaks).
    """
    # Texts of any length (the default limit is 128 KiB a field); strict, so that a quote
    # that is never closed is an error instead of swallowing the rest of the file.
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="," if kind == "csv" else "\t",
                        quoting=csv.QUOTE_MINIMAL if kind == "csv" else csv.QUOTE_NONE, strict=kind == "csv")
    line = 0
    try:
        for row in reader:
            first_line, line = line + 1, reader.line_num
            yield first_line, row
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            raise InvalidInputError(
                f"{where}: line {line + 1}: a quoted field (\") opened in this row is never closed; close the quote, "
                "or double any quote inside a quoted field (\"\")"
            ) from None
        raise InvalidInputError(f"{where}: line {reader.line_num}: {error}") from None


def csv_header(records, where, noun):
    """The first record of csv_records as column names (stripped); an empty file or a name used
    twice is an error. `noun` names what the rows hold ("example")."""
    try:
        _, header = next(records)
    except StopIteration:
        raise InvalidInputError(f"{where} is empty; it needs a header row and at least one {noun}") from None
    header = [name.strip() for name in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InvalidInputError(
            f"{where}: line 1 (header) names the column {repeated[0]!r} more than once (columns: {', '.join(header)}); "
            "give every column its own name"
        )
    return header


def check_row_length(row, header, line, where):
    if len(row) != len(header):
        raise InvalidInputError(
            f"{where}: line {line} has {_count(len(row), 'field')} but the header has {len(header)}; "
            "check the quoting and delimiters of that row"
        )


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _json_kind(value):
    return {list: "array", str: "string", bool: "true/false", type(None): "null"}.get(type(value), "number")


def label_vocabulary(table, flag="--train_data"):
    """Sorted label names (numerically when every label is an integer); at least two."""
    names = set(table.labels)
    if len(names) < 2:
        raise InvalidInputError(
            f"{flag}={table.path}: every example has the label {next(iter(names))!r}; a classifier needs at least two classes"
        )
    # Hundreds of labels that are nearly all different: the label column is probably a text.
    if len(names) > 100 and len(names) > len(table.labels) / 2:
        raise InvalidInputError(
            f"{flag}={table.path}: {len(names):,} different labels in {len(table.labels):,} examples; check "
            "--label_column (it should name the column of classes, not of texts)"
        )
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def label_ids(table, vocabulary, flag):
    """Label ids for a table; a label training never saw is an error naming its line."""
    index = {name: position for position, name in enumerate(vocabulary)}
    ids = []
    for label, line in zip(table.labels, table.lines):
        if label not in index:
            raise InvalidInputError(
                f"{flag}={table.path}: line {line}: label {label!r} does not occur in the training data "
                f"(labels: {', '.join(vocabulary)})"
            )
        ids.append(index[label])
    return np.array(ids, np.int32)


def stratified_split(labels, fraction, seed):
    """(train positions, validation positions): `fraction` of each class, seeded, shuffled."""
    generator = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, valid = [], []
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        generator.shuffle(positions)
        count = max(1, int(round(len(positions) * fraction))) if len(positions) > 1 else 0
        valid.extend(positions[:count])
        train.extend(positions[count:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(valid, np.int64))


def tokenize_texts(tokenizer, texts, sequence_length, keep_whitespace=False, truncation="head"):
    """Token ids of each text, cut to sequence_length and padded with [PAD] (0): int32 [N, L].

    L is the longest text's length, at most sequence_length; `truncation` says which tokens a
    longer text keeps (keraslm.tokenizers.truncate). Whitespace-only tokens are dropped unless
    keep_whitespace (Tokenizer.tokenize). Returns (ids, number of texts cut).
    """
    # Reading tables needs no TensorFlow; tokenizing does.
    import tensorflow as tf
    from keraslm.tokenizers import truncate

    rows, cut = [], 0
    for start in range(0, len(texts), 1024):
        ragged = tokenizer.tokenize(tf.constant(texts[start : start + 1024]), keep_whitespace=keep_whitespace)
        lengths = ragged.row_lengths().numpy()
        cut += int((lengths > sequence_length).sum())
        rows.append(truncate(ragged, sequence_length, truncation))
    ragged = tf.concat(rows, axis=0)
    width = max(1, int(tf.reduce_max(ragged.row_lengths())))
    return ragged.to_tensor(default_value=0, shape=[None, width]).numpy().astype(np.int32), cut


# Batches are made of texts of similar length: each run of this many batches of the shuffled
# order is sorted by length before it is cut into batches, and the batches are then shuffled.
# Padding is then a small part of every batch (SST-2's phrases run from 1 to 50+ tokens).
BUCKET_BATCHES = 50


def classification_dataset(ids, labels, batch_size, seed, start_step=0, num_steps=None):
    """Shuffled (ids [B, <= L], labels [B]) batches; batch k depends only on (seed, k).

    Each epoch is a stateless shuffle keyed by (seed, epoch), as the language-model windows are,
    so a resumed run sees the batches the interrupted one would have. Texts are grouped by length
    (BUCKET_BATCHES) and each batch is cut to its longest text.
    """
    import tensorflow as tf

    count = len(labels)
    batch_size = min(batch_size, count)
    batches_per_epoch = count // batch_size
    first_epoch, skip = divmod(start_step, batches_per_epoch)
    lengths = tf.constant((np.asarray(ids) != 0).sum(axis=1), tf.int64)
    ids, labels = tf.constant(ids), tf.constant(labels)
    longest = int(ids.shape[1]) + 1

    def epoch_batches(epoch):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), epoch_seed)
        order = order[: batches_per_epoch * batch_size]
        # Sort each run of BUCKET_BATCHES batches by length (the key keeps runs apart) ...
        run = tf.range(batches_per_epoch * batch_size, dtype=tf.int64) // (BUCKET_BATCHES * batch_size)
        order = tf.gather(order, tf.argsort(run * longest + tf.gather(lengths, order), stable=True))
        batches = tf.reshape(order, [batches_per_epoch, batch_size])
        # ... then shuffle the batches, so that lengths do not rise through the epoch.
        batches = tf.random.experimental.stateless_shuffle(batches, tf.stack([tf.cast(seed, tf.int64), -1 - epoch]))
        return tf.data.Dataset.from_tensor_slices(batches)

    dataset = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_batches).skip(skip)
    if num_steps is not None:
        dataset = dataset.take(num_steps)
    dataset = dataset.map(lambda rows: (trim_padding(tf.gather(ids, rows)), tf.gather(labels, rows)))
    return _sharded_by_data(dataset.prefetch(2))


def _sharded_by_data(dataset):
    """Under tf.distribute, each global batch is split over the replicas in order, whatever the
    number of workers, so batch k stays a function of (seed, k) (keraslm.data._fixed_pipeline_options)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def trim_padding(ids):
    """ids (B, L) without the padding columns no row of the batch needs.

    The width is the batch's longest text rounded up to a multiple of 8 (up to 64 tokens), 32 (up
    to 256) or 128 (beyond): short texts in a batch of short texts cost no padding, and XLA
    compiles at most about 20 widths, not one per length.
    """
    import tensorflow as tf

    longest = tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), axis=1))
    step = tf.where(longest <= 64, 8, tf.where(longest <= 256, 32, 128))
    width = tf.minimum(tf.shape(ids)[1], (longest + step - 1) // step * step)
    return ids[:, : tf.maximum(width, 1)]


def evaluation_batches(ids, labels, batch_size):
    """Every example once, in order; the last batch may be smaller."""
    import tensorflow as tf

    return _sharded_by_data(
        tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch_size).map(
            lambda rows, row_labels: (trim_padding(rows), row_labels)
        ).prefetch(2)
    )
