"""A raw-text corpus read as a stream: several files and glob patterns, never held whole in memory.

A corpus is the text of its files joined in order: a plain UTF-8 file (optionally .gz) as it is,
a CSV/TSV/JSONL file (optionally .gz) as its text column, one example per line. With several
files, each one's trailing line breaks are dropped and one line break ends each file; one plain
file is taken exactly as it is. keraslm 0.2 read the same text into one str (data.read_corpus
still does, for small files): streaming it gives the same characters, so the same split, the same
chunks and the same tokens.

Reading checks every file once up front (`check`): missing, a directory, not UTF-8 (line,
column and byte offset), a broken .gz, no text. Then `text(start, stop)` streams any character
range as often as needed (training text, validation text, the tokenizer's sample), and `chunks`
cuts a stream into the pieces of 256 whole lines that tokenizing works on.
"""

import codecs
import dataclasses
import glob
import gzip
import math
import os
import sys
import zlib

from keraslm import tables
from keraslm.errors import InputNotFoundError, InvalidInputError

# Bytes read per step: large enough that Python's per-block work is noise, small enough to bound
# memory whatever the file size.
_BLOCK_BYTES = 1 << 20

# Lines per tokenizing chunk: keraslm.tokenizers.text_chunks's size, so chunks (and the tokens
# of tokenizers that mark where a string starts, as SentencePiece does) are the same as before.
LINES_PER_CHUNK = 256

# The most characters in one piece: 256 lines of ordinary text are far fewer (tinyshakespeare's are
# ~10K), so pieces stay those of keraslm 0.2 there; long lines (one-line files, minified JSON)
# are cut, which bounds memory and keeps a tokenizer call (and so a shard) near its size.
MAX_CHUNK_CHARACTERS = 1 << 18

# The most text a new run's tokenizer learns from. Vocabulary statistics settle long before this
# (SentencePiece's own trainer samples 1M sentences by default), and the learners hold their
# whole input in memory, so the bound keeps a 100 GB corpus's tokenizer as cheap as a 10 MB one.
# A larger corpus is sampled evenly (every k-th chunk); a character seen only outside the sample
# becomes [UNK] for the char tokenizer. 10M characters hold nearly every character of a language
# that occurs at all often, Chinese included.
TOKENIZER_SAMPLE_CHARACTERS = 10_000_000


def is_table(path):
    """A CSV, TSV or JSONL file (optionally .gz), by its name."""
    name = path[:-3] if path.endswith(".gz") else path
    return os.path.splitext(name)[1].lower() in (".csv", ".tsv", ".jsonl", ".json")


def expand_paths(paths, flag):
    """'a.txt,data/*.txt' -> the files, in order; a pattern gives its matches sorted by name.

    A repeated flag arrives joined by commas. A pattern that matches nothing is an error (a typo
    would otherwise train on less than the user meant).
    """
    names = [path.strip() for path in paths.split(",") if path.strip()]
    if not names:
        raise InvalidInputError(f"{flag} is empty; give the path of a UTF-8 text file (or a CSV/TSV/JSONL file)")
    files = []
    for name in names:
        if glob.has_magic(name):
            found = sorted(glob.glob(name))
            matches = [path for path in found if not os.path.isdir(path)]
            if not matches:
                what = "only directories" if found else "no file"
                raise InputNotFoundError(f"{flag}={name}: the pattern matches {what}; check it (quote it in the shell)")
            files.extend(matches)
        else:
            files.append(name)
    seen = set()
    for path in files:
        key = os.path.realpath(path)
        if key in seen:
            # Allowed (a way to weight a file), but usually a mistake: the held-out tail may then
            # repeat text the model trains on.
            print(f"keraslm: note: {flag} names {path} more than once; it is read each time", file=sys.stderr, flush=True)
        seen.add(key)
    return files


def _open_binary(path, flag, what):
    if not os.path.exists(path):
        raise InputNotFoundError(f"{flag}={path}: no such file; check the path")
    if os.path.isdir(path):
        raise InvalidInputError(f"{flag}={path} is a directory; give {what} inside it")
    try:
        return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except OSError as error:
        raise InvalidInputError(f"{flag}={path}: cannot read ({error.strerror or error})") from None


def _read_error(path, flag, error):
    if path.endswith(".gz") and not isinstance(error, PermissionError):
        return InvalidInputError(
            f"{flag}={path}: not a complete gzip file ({error}); re-create it with gzip, or drop the .gz ending "
            "if it is not compressed"
        )
    return InvalidInputError(f"{flag}={path}: cannot read ({getattr(error, 'strerror', None) or error})")


def iter_file_text(path, flag="--train_data", what="a UTF-8 text file"):
    """The decoded text of a plain file, block by block (a byte-order mark is dropped).

    A byte that is not UTF-8 is an error naming its line, column and byte offset.
    """
    # Plain UTF-8 with the byte-order mark dropped by hand: utf-8-sig's decoder reports error
    # positions 3 bytes off after a mark.
    decoder = codecs.getincrementaldecoder("utf-8")()
    first = True
    offset, line, line_start = 0, 1, 0  # Bytes before this block; its line; where that line began.
    with _open_binary(path, flag, what) as file:
        while True:
            try:
                block = file.read(_BLOCK_BYTES)
            except (OSError, EOFError, zlib.error) as error:
                raise _read_error(path, flag, error) from None
            pending = decoder.getstate()[0]  # Bytes of a character cut by the previous block.
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                data = pending + block
                position = offset - len(pending) + error.start
                newlines = data.count(b"\n", 0, error.start)
                line_of_error = line + newlines
                start = (offset - len(pending) + data.rfind(b"\n", 0, error.start) + 1) if newlines else line_start
                raise InvalidInputError(
                    f"{flag}={path}: line {line_of_error}, column {position - start + 1} (byte offset {position}): byte "
                    f"0x{data[error.start]:02x} is not valid UTF-8; convert the file to UTF-8 "
                    f"(e.g. iconv -f latin1 -t utf-8)"
                ) from None
            newline = block.rfind(b"\n")
            if newline >= 0:
                line += block.count(b"\n")
                line_start = offset + newline + 1
            offset += len(block)
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            if text:
                yield text
            if not block:
                return


def _iter_table_text(path, flag, text_column):
    """A table's text column, one example per line. The table is read whole (one file at a time):
    its parser checks rows, columns and quoting across lines."""
    texts = tables.read_table(path, flag, text_column, labelled=False).texts
    for start in range(0, len(texts), 1024):
        yield "".join(text.strip("\n") + "\n" for text in texts[start : start + 1024])


@dataclasses.dataclass
class Corpus:
    """Files read as one text. Build with `open_corpus`, which checks every file."""

    files: list
    flag: str
    text_column: str
    # Characters in the joined text, counted by open_corpus.
    num_characters: int = 0

    def _file_text(self, path):
        if is_table(path):
            return _iter_table_text(path, self.flag, self.text_column)
        return iter_file_text(path, self.flag)

    def _joined(self):
        """The whole text, block by block: each file's trailing line breaks held back, one written."""
        if len(self.files) == 1:
            yield from self._file_text(self.files[0])
            return
        for path in self.files:
            held = ""
            for text in self._file_text(path):
                body = text.rstrip("\n")
                if body:
                    if held:
                        yield held
                    yield body
                    held = text[len(body) :]
                else:
                    held += text
            yield "\n"

    def text(self, start=0, stop=None):
        """The joined text's characters [start, stop) as a stream of str blocks."""
        position = 0
        for block in self._joined():
            end = position + len(block)
            if stop is not None and position >= stop:
                return
            if end > start:
                yield block[max(0, start - position) : None if stop is None or end <= stop else stop - position]
            position = end

    def fingerprint(self):
        """What identifies the input: each file's path, size and modification time, and the column."""
        files = []
        for path in self.files:
            status = os.stat(path)
            files.append([os.path.realpath(path), status.st_size, status.st_mtime_ns])
        return {"files": files, "text_column": self.text_column if any(map(is_table, self.files)) else ""}


def open_corpus(paths, flag="--train_data", text_column=""):
    """The corpus of `paths` (comma-separated, glob patterns allowed), each file checked and counted.

    This reads every file once; the characters are counted, not kept.
    """
    corpus = Corpus(expand_paths(paths, flag), flag, text_column)
    for path in corpus.files:
        characters, trailing, has_text = 0, 0, False  # trailing: line breaks ending the text so far
        for text in corpus._file_text(path):  # pylint: disable=protected-access
            characters += len(text)
            has_text = has_text or not text.isspace()
            body = text.rstrip("\n")
            trailing = len(text) - len(body) if body else trailing + len(text)
        if not has_text:
            raise InvalidInputError(f"{flag}={path} is empty (no text besides whitespace); give a file with text")
        # Joined with others, a file's trailing line breaks become one (Corpus._joined).
        corpus.num_characters += characters if len(corpus.files) == 1 else characters - trailing + 1
    return corpus


def chunks(blocks, lines_per_chunk=LINES_PER_CHUNK, max_characters=MAX_CHUNK_CHARACTERS):
    """Blocks of text -> pieces of `lines_per_chunk` whole lines (line breaks kept).

    The same pieces as str.splitlines on the whole text, grouped: a line cut between two blocks
    (or a "\\r" that a "\\n" may follow) is carried to the next. A piece also ends before it
    would pass `max_characters`, and a longer line is cut into pieces of that size, so memory
    and shard sizes stay bounded on text with few line breaks (a 1 GB file on one line).
    """
    lines, size, carry = [], 0, ""

    def add(line):
        nonlocal lines, size
        for start in range(0, len(line), max_characters):
            piece = line[start : start + max_characters]
            if lines and size + len(piece) > max_characters:
                yield "".join(lines)
                lines, size = [], 0
            lines.append(piece)
            size += len(piece)
            if len(lines) == lines_per_chunk:
                yield "".join(lines)
                lines, size = [], 0

    for block in blocks:
        parts = (carry + block).splitlines(keepends=True)
        carry = ""
        if parts:
            last = parts[-1]
            if last.splitlines()[0] == last or last.endswith("\r"):
                carry = parts.pop()
        if len(carry) > max_characters:  # a line with no end in sight: cut it
            cut = len(carry) - len(carry) % max_characters - (max_characters if carry.endswith("\r") else 0)
            parts.append(carry[:cut])
            carry = carry[cut:]
        for part in parts:
            yield from add(part)
    if carry:
        yield from add(carry)
    if lines:
        yield "".join(lines)


def sample(corpus, start, stop, limit=TOKENIZER_SAMPLE_CHARACTERS):
    """Characters [start, stop) whole if they are at most `limit`, else every k-th chunk of them,
    spread over the whole range, about `limit` characters in all."""
    length = stop - start
    if length <= limit:
        return "".join(corpus.text(start, stop))
    every = math.ceil(length / limit)
    return "".join(piece for index, piece in enumerate(chunks(corpus.text(start, stop))) if index % every == 0)
