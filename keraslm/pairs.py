"""Sentence pairs for --task=seq2seq: a file of (source, target) sentences -> Pairs.

Formats, told by the file name as in keraslm.tables, each optionally followed by `.gz`:
  .txt          tab-separated with no header row, one pair a line: the Tatoeba / manythings.org
                format (fra.txt). Columns after those read are ignored (Anki exports add a third,
                the attribution). Quotes are plain text.
  .tsv, .csv    a header row naming the columns, or no header row when the columns are positions.
  .jsonl/.json  one JSON object a line.
Columns: --source_column / --target_column each name a header column or JSONL field, or give a
1-based position ("1", "2"); positions mean the CSV/TSV file has no header row, every line being a
pair. Both are names or both positions; JSONL fields take names only. Empty: the columns "source"
and "target", or 1 and 2 in a .txt file or when the other flag is a position.

Every problem a user can fix (a missing column, a ragged row, an empty source or target, a byte that
is not UTF-8, a JSONL line that is not an object or a value that is not a string, a file without
pairs) is an InvalidInputError naming the flag, the file and the line. A pair whose source ends a
sentence but whose target does not (or ends with a space) looks cut off, as the last line of a
file cut short does: such pairs are kept and named once through `say`. Each sentence is stripped
of whitespace at both ends.
"""

import dataclasses
import hashlib
import json
import re

from keraslm.errors import InvalidInputError
from keraslm.files import read_utf8
from keraslm.tables import check_row_length, csv_header, csv_records, jsonl_objects, table_format

FORMATS = ("txt", "tsv", "csv", "jsonl")
DEFAULT_SOURCE_COLUMN, DEFAULT_TARGET_COLUMN = "source", "target"
DEFAULT_SOURCE_POSITION, DEFAULT_TARGET_POSITION = 1, 2

SOURCE_COLUMN_HELP = (
    "--task=seq2seq: the column holding the sentence to translate: a header column or JSONL field name, or a "
    "position counted from 1 (a CSV/TSV file read by positions has no header row). Empty: 'source'; 1 in a .txt "
    "file (tab-separated, no header row, columns after the second ignored) or when --target_column is a position."
)
TARGET_COLUMN_HELP = (
    "--task=seq2seq: the column holding its translation, a name or a position like --source_column (both names "
    "or both positions). Empty: 'target'; 2 in a .txt file or when --source_column is a position."
)

# A source ending with one of these ends a sentence, so its translation should end one too.
SENTENCE_ENDS = ".!?…。！？"
# How a complete target may end: sentence ends and closing quotes and brackets, of the scripts
# Tatoeba files come in (Chinese and Japanese full stops, the Arabic, Urdu, Hindi, Armenian and
# Amharic ones, the Greek question mark ";"), so that only a target that stops mid-sentence is named.
TARGET_ENDS = SENTENCE_ENDS + "»\"')]”’›」』）】;;؟۔।॥։።"
# Cut-off lines named in the warning; the count says how many more there are.
CUT_LINES_SHOWN = 5


@dataclasses.dataclass
class Pairs:
    path: str
    sources: list  # str, stripped
    targets: list  # str, stripped
    # 1-based line of each pair in the file (its first line for a multi-line CSV record).
    lines: list


def read_pairs(path, flag="--train_data", source_column="", target_column="", say=None):
    """Every pair of a .txt/.tsv/.csv/.jsonl(.gz) file (the module docstring has the rules);
    say(message) is called once if some pairs look cut off."""
    kind = table_format(path, flag, FORMATS)
    where = f"{flag}={path}"
    by_position, source, target = _columns(kind, source_column.strip(), target_column.strip(), where)
    content = read_utf8(path, flag, "a file of sentence pairs")
    pairs = Pairs(path, [], [], [])
    cut = []

    def add(source_text, target_text, line, source_name, target_name):
        for role, text, name in (("source", source_text, source_name), ("target", target_text, target_name)):
            if not text.strip():
                raise InvalidInputError(
                    f"{where}: line {line}: the {role} ({name}) is empty; remove the pair or fill it in"
                )
        if _looks_cut_off(source_text, target_text):
            cut.append(line)
        pairs.sources.append(source_text.strip())
        pairs.targets.append(target_text.strip())
        pairs.lines.append(line)

    if kind == "jsonl":
        for line, row in jsonl_objects(content, where, f'{{"{source}": "...", "{target}": "..."}}'):
            texts = [_json_text(row, name, flag_name, line, where)
                     for name, flag_name in ((source, "--source_column"), (target, "--target_column"))]
            add(*texts, line, f"the {source!r} field", f"the {target!r} field")
    elif by_position:
        records = csv_records(content, "csv" if kind == "csv" else "tsv", where)
        needed, flag_name = max((source, "--source_column"), (target, "--target_column"))
        for line, row in records:
            if not row or row == [""]:
                continue
            if len(row) < needed:
                separator = "a comma" if kind == "csv" else "a tab"
                raise InvalidInputError(
                    f"{where}: line {line} has {_count(len(row), 'field')}, but {flag_name}={needed} needs at least "
                    f"{needed}; each line holds a source and a target separated by {separator}"
                )
            add(row[source - 1], row[target - 1], line, f"column {source}", f"column {target}")
    else:
        records = csv_records(content, kind, where)
        header = csv_header(records, where, "pair")
        for name, flag_name in ((source, "--source_column"), (target, "--target_column")):
            if name not in header:
                raise InvalidInputError(
                    f"{where}: line 1 (header) has no column {name!r} (columns: {', '.join(header)}); pass "
                    f"{flag_name}, or --source_column=1 --target_column=2 if the file has no header row"
                )
        source_index, target_index = header.index(source), header.index(target)
        for line, row in records:
            if not row or row == [""]:
                continue
            check_row_length(row, header, line, where)
            add(row[source_index], row[target_index], line, f"the {source!r} column", f"the {target!r} column")

    if not pairs.sources:
        if not content.strip():
            raise InvalidInputError(f"{where} is empty; it needs at least one pair")
        needs = {"jsonl": "one JSON object on a line"}.get(kind, "one row below the header")
        if by_position:
            needs = "one line holding a source and a target"
        raise InvalidInputError(f"{where} has no pairs; it needs at least {needs}")
    if cut and say is not None:
        say(_cut_off_message(where, cut, pairs.lines[-1], len(pairs.sources)))
    return pairs


def _columns(kind, source, target, where):
    """(by_position, source, target): both 1-based ints, or both names."""
    given = (("--source_column", source), ("--target_column", target))
    numbered = [(flag, value) for flag, value in given if re.fullmatch("[0-9]+", value)]
    named = [(flag, value) for flag, value in given if value and not re.fullmatch("[0-9]+", value)]
    if numbered and named:
        raise InvalidInputError(
            f"{where}: {numbered[0][0]}={numbered[0][1]} is a position but {named[0][0]}={named[0][1]} a name; give "
            "both as names (a file with a header row) or both as positions (a file without one)"
        )
    if kind == "jsonl" and numbered:
        raise InvalidInputError(
            f"{where}: {numbered[0][0]}={numbered[0][1]} is a position, but the fields of a JSON lines file have no "
            "order; give the field's name"
        )
    if kind == "txt" and named:
        raise InvalidInputError(
            f"{where}: {named[0][0]}={named[0][1]} names a column, but a .txt file has no header row; give positions "
            "(1, 2, ...), or name the file .tsv if its first line names the columns"
        )
    by_position = kind == "txt" or bool(numbered)
    if by_position:
        source, target = int(source or DEFAULT_SOURCE_POSITION), int(target or DEFAULT_TARGET_POSITION)
        for flag, value in (("--source_column", source), ("--target_column", target)):
            if value == 0:
                raise InvalidInputError(f"{where}: {flag}=0: column positions count from 1")
    else:
        source, target = source or DEFAULT_SOURCE_COLUMN, target or DEFAULT_TARGET_COLUMN
    if source == target:
        column = f"column {source}" if by_position else repr(source)
        defaulted = [flag for flag, value in given if not value]
        note = f" ({defaulted[0]} is empty and defaults to it)" if defaulted else ""
        raise InvalidInputError(
            f"{where}: --source_column and --target_column both name {column}{note}; the source and the target "
            "must be different columns"
        )
    return by_position, source, target


def _json_text(row, name, flag_name, line, where):
    if name not in row:
        raise InvalidInputError(
            f"{where}: line {line} has no {name!r} field (fields: {', '.join(row)}); pass {flag_name}, or give every "
            "line that field"
        )
    value = row[name]
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{where}: line {line}: the {name!r} field is {json.dumps(value)[:40]}, not a string; write the sentence "
            "as a JSON string"
        )
    return value


def _looks_cut_off(source, target):
    """The source ends a sentence but the target stops without ending one, or with a space: what
    the last line of a file cut short looks like (fra.txt's last line is "They did it again.\tIls l'ont ")."""
    if source.rstrip()[-1:] not in tuple(SENTENCE_ENDS):
        return False
    return target.endswith((" ", "\t")) or target.rstrip()[-1:] not in tuple(TARGET_ENDS)


def _cut_off_message(where, cut, last_line, count):
    shown = cut[:CUT_LINES_SHOWN]
    # The last line is the one most likely cut (a download or copy that stopped early): always name it.
    if cut[-1] == last_line and last_line not in shown:
        shown = cut[: CUT_LINES_SHOWN - 1] + [last_line]
    notes = []
    if len(cut) > len(shown):
        notes.append(f"{len(cut):,} in all")
    if cut[-1] == last_line:
        notes.append(f"{last_line} is the last line: a file cut short ends like this")
    listing = ("lines " if len(shown) > 1 else "line ") + ", ".join(map(str, shown))
    if notes:
        listing += f" ({'; '.join(notes)})"
    looks, its, it, it_is = ("looks", "its", "it", "it is") if len(cut) == 1 else ("look", "their", "them", "they are")
    message = (
        f"keraslm: {where}: {_count(len(cut), 'pair')} {looks} cut off ({its} source ends a sentence, {its} target "
        f"does not): {listing}; kept — check {it}, and remove or complete {it} if {it_is} truncated"
    )
    if len(cut) > count / 2:
        # A target language written without final punctuation flags most pairs; say so, not only "cut off".
        message += "; most pairs end this way: if the targets are written without final punctuation, ignore this"
    return message


def _count(number, noun):
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def split_by_source(pairs, fraction, seed):
    """(train, held_out): about `fraction` of the distinct source sentences are held out, each
    with all of its pairs.

    The translations of one sentence sit on consecutive lines; holding out some of them would
    test on sentences the model trained on. A source's side comes from a SHA-256 hash of (seed,
    source), so the split is the same whatever the file's order, process or Python's hash seed.
    A file of a few sources still gets one held out (the lowest hash) and one kept (the highest).
    """
    where = f"--train_data={pairs.path}"
    if not 0 < fraction < 1:
        raise InvalidInputError(f"{where}: --valid_fraction={fraction}: the held-out share must be between 0 and 1")
    scores = {}
    for source in pairs.sources:
        if source not in scores:
            digest = hashlib.sha256(f"{seed}\0{source}".encode("utf-8")).digest()
            scores[source] = int.from_bytes(digest[:8], "big") / 2**64
    if len(scores) < 2:
        raise InvalidInputError(
            f"{where}: every pair has the same source sentence, so none can be held out for validation; give "
            "--valid_data, or more sentences"
        )
    held_out = {source for source, score in scores.items() if score < fraction}
    by_score = sorted(scores, key=lambda source: (scores[source], source))
    if not held_out:
        held_out = {by_score[0]}
    elif len(held_out) == len(scores):
        held_out.discard(by_score[-1])
    return _subset(pairs, lambda source: source not in held_out), _subset(pairs, lambda source: source in held_out)


def _subset(pairs, keep):
    chosen = [position for position, source in enumerate(pairs.sources) if keep(source)]
    return Pairs(
        pairs.path,
        [pairs.sources[position] for position in chosen],
        [pairs.targets[position] for position in chosen],
        [pairs.lines[position] for position in chosen],
    )


def references(pairs):
    """(sources, targets): each distinct source once, in the order first seen, and the list of
    every target it has (in file order): the references of multi-reference BLEU."""
    grouped = {}
    for source, target in zip(pairs.sources, pairs.targets):
        grouped.setdefault(source, []).append(target)
    return list(grouped), list(grouped.values())
