"""Labelled text tables: CSV, TSV and JSONL files (optionally gzipped) -> (texts, labels).

Every problem a user can have with such a file (missing column, ragged row, empty text, a byte
that is not UTF-8, a JSONL line that is not an object, an unknown label) is an InvalidInputError
naming the flag, the file and the line. The format comes from the file name: `.csv`, `.tsv`,
`.jsonl` (or `.json`), each optionally followed by `.gz`; CSV and TSV need a header row.
"""

import csv
import dataclasses
import gzip
import io
import json
import os

import numpy as np

from keraslm.errors import InputNotFoundError, InvalidInputError

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


def table_format(path, flag):
    name = path[:-3] if path.endswith(".gz") else path
    extension = os.path.splitext(name)[1].lower().lstrip(".")
    if extension == "json":
        extension = "jsonl"
    if extension not in FORMATS:
        raise InvalidInputError(
            f"{flag}={path}: cannot tell the format from the name; use a .csv, .tsv or .jsonl file (optionally .gz)"
        )
    return extension


def _open_text(path, flag):
    if not path:
        raise InvalidInputError(f"{flag} is empty; give the path of a CSV, TSV or JSONL file")
    if not os.path.exists(path):
        raise InputNotFoundError(f"{flag}={path}: no such file; check the path")
    if os.path.isdir(path):
        raise InvalidInputError(f"{flag}={path} is a directory; give a CSV, TSV or JSONL file")
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise InvalidInputError(f"{flag}={path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InvalidInputError(
            f"{flag}={path}: line {line}: byte 0x{data[error.start]:02x} is not valid UTF-8; convert the file to UTF-8"
        ) from None


def _label_string(value, where):
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list, float)):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        raise InvalidInputError(f"{where}: the label {json.dumps(value)} is not a string or an integer")
    return str(value).strip()


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
    content = _open_text(path, flag)
    where = f"{flag}={path}"
    texts, labels, lines = [], [], []

    def add(text, label, line, columns):
        if text is None:
            raise InvalidInputError(f"{where}: line {line} has no {text_column!r} field (fields: {', '.join(columns)})")
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
        # split("\n"), not splitlines(): JSON strings may hold U+2028 or U+0085, which splitlines breaks at.
        for number, raw in enumerate(content.split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as error:
                raise InvalidInputError(f"{where}: line {number} is not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"{where}: line {number} is not a JSON object but {type(row).__name__}")
            columns = list(row)
            if not text_column:
                text_column = _pick_text_column(columns, "", label_column, f"{where}: line {number}")
            if labelled and label_column not in row:
                raise InvalidInputError(
                    f"{where}: line {number} has no {label_column!r} field (fields: {', '.join(columns)}); pass --label_column"
                )
            add(row.get(text_column), row.get(label_column), number, columns)
    else:
        reader = csv.reader(io.StringIO(content, newline=""), delimiter="," if kind == "csv" else "\t",
                            quoting=csv.QUOTE_MINIMAL if kind == "csv" else csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise InvalidInputError(f"{where} is empty; it needs a header row and at least one example") from None
        header = [name.strip() for name in header]
        text_column = _pick_text_column(header, text_column, label_column, f"{where}: line 1 (header)")
        for name in (text_column, label_column) if labelled else (text_column,):
            if name not in header:
                flag_name = "--text_column" if name == text_column else "--label_column"
                raise InvalidInputError(
                    f"{where}: line 1 (header) has no column {name!r} (columns: {', '.join(header)}); pass {flag_name}"
                )
        text_index, label_index = header.index(text_column), header.index(label_column) if labelled else None
        line = reader.line_num
        try:
            for row in reader:
                first_line, line = line + 1, reader.line_num
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise InvalidInputError(
                        f"{where}: line {first_line} has {len(row)} fields but the header has {len(header)}; "
                        "check the quoting and delimiters of that row"
                    )
                add(row[text_index], row[label_index] if labelled else None, first_line, header)
        except csv.Error as error:
            raise InvalidInputError(f"{where}: line {reader.line_num}: {error}") from None
    if not texts:
        raise InvalidInputError(f"{where} has no examples; it needs at least one row below the header")
    return Table(path, texts, labels, lines)


def label_vocabulary(table, flag="--train_data"):
    """Sorted label names (numerically when every label is an integer); at least two."""
    names = set(table.labels)
    if len(names) < 2:
        raise InvalidInputError(
            f"{flag}={table.path}: every example has the label {next(iter(names))!r}; a classifier needs at least two classes"
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


def tokenize_texts(tokenizer, texts, sequence_length):
    """Token ids of each text, cut to sequence_length and padded with [PAD] (0): int32 [N, L].

    L is the longest text's length, at most sequence_length. Returns (ids, number of texts cut).
    """
    import tensorflow as tf  # Reading tables needs no TensorFlow; tokenizing does.

    rows, cut = [], 0
    for start in range(0, len(texts), 1024):
        ragged = tokenizer.tokenize(tf.constant(texts[start : start + 1024]))
        lengths = ragged.row_lengths().numpy()
        cut += int((lengths > sequence_length).sum())
        rows.append(ragged[:, :sequence_length])
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
    dataset = dataset.map(lambda rows: (_trimmed(tf.gather(ids, rows)), tf.gather(labels, rows)))
    return dataset.prefetch(2)


# Batches are cut to their longest text rounded up to a multiple of this: short texts in a
# batch of short texts cost no padding, and XLA compiles a handful of widths, not one per length.
WIDTH_MULTIPLE = 8


def _trimmed(ids):
    """ids (B, L) without the padding columns no row of the batch needs (width a multiple of 8)."""
    import tensorflow as tf

    longest = tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), axis=1))
    width = tf.minimum(tf.shape(ids)[1], (longest + WIDTH_MULTIPLE - 1) // WIDTH_MULTIPLE * WIDTH_MULTIPLE)
    return ids[:, : tf.maximum(width, 1)]


def evaluation_batches(ids, labels, batch_size):
    """Every example once, in order; the last batch may be smaller."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch_size).map(
        lambda rows, row_labels: (_trimmed(rows), row_labels)
    ).prefetch(2)
