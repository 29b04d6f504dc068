"""Sentence pairs for seq2seq: .txt / TSV / CSV / JSONL (optionally gzipped) read with errors that name
the file and line, a warning for cut-off lines, a split that keeps each source sentence on one side."""

import gzip
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import REPO
from keraslm import pairs as pairs_lib
from keraslm.errors import InputNotFoundError, InvalidInputError

FRA = REPO.parent / "shared" / "data" / "eng-fra" / "fra.txt"
needs_fra = pytest.mark.skipif(not FRA.exists(), reason=f"{FRA} is absent")


def _write(path, text, gzipped=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return str(path)


def _read(path, *args, **kwargs):
    said = []
    read = pairs_lib.read_pairs(path, *args, say=said.append, **kwargs)
    return read, said


def test_a_tatoeba_txt_file_is_tab_separated_without_a_header(tmp_path):
    # Anki exports add an attribution column; quotes are text; a blank line is skipped.
    path = _write(tmp_path / "fra.txt", (
        "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\n"
        "Run!\tCours\u202f!\n"
        "\n"
        '  He said "no".\t« Non », dit-il.\n'
        "Run!\tCourez\u202f!\n"
    ))
    read, said = _read(path)
    assert read.sources == ["Go.", "Run!", 'He said "no".', "Run!"]
    assert read.targets == ["Va !", "Cours\u202f!", "« Non », dit-il.", "Courez\u202f!"]
    assert read.lines == [1, 2, 4, 5] and read.path == path
    assert said == []


@needs_fra
def test_the_real_fra_txt_reads_every_pair_and_names_its_cut_off_last_line():
    read, said = _read(str(FRA))
    assert len(read.sources) == len(read.targets) == len(read.lines) == 18066
    assert (read.sources[0], read.targets[0]) == ("Go.", "Va !")
    assert read.lines[-1] == 18066 and read.targets[-1] == "Ils l'ont"  # Stripped after the check.
    assert len(said) == 1
    assert said[0].startswith(f"keraslm: --train_data={FRA}: 2 pairs look cut off")
    assert "lines 17924, 18066 (18066 is the last line: a file cut short ends like this); kept" in said[0]


HEADER_FILES = [
    ("p.tsv", 'id\ten\tfr\n1\tGo.\tVa !\n2\tHe said "hi".\t"Salut", dit-il.\n3\tRun!\tFile !\n', [2, 3, 4]),
    ("p.csv", 'en,fr,id\nGo.,Va !,1\n"He said ""hi"".","""Salut"",\ndit-il.",2\nRun!,File !,3\n', [2, 3, 5]),
    ("p.jsonl", "\n".join(json.dumps(row) for row in [
        {"en": "Go.", "fr": "Va !", "id": 1}, {"en": 'He said "hi".', "fr": '"Salut", dit-il.'}, {"fr": "File !", "en": "Run!"},
    ]) + "\n\n", [1, 2, 3]),
]


@pytest.mark.parametrize("name, content, lines", HEADER_FILES)
@pytest.mark.parametrize("gzipped", [False, True])
def test_named_columns_of_tsv_csv_and_jsonl(tmp_path, name, content, lines, gzipped):
    path = _write(tmp_path / (name + (".gz" if gzipped else "")), content, gzipped)
    read, said = _read(path, "--valid_data", "en", "fr")
    assert read.sources == ["Go.", 'He said "hi".', "Run!"]
    assert read.targets[0] == "Va !" and read.targets[2] == "File !"
    assert read.targets[1] == ('"Salut",\ndit-il.' if name.endswith("csv") else '"Salut", dit-il.')
    assert read.lines == lines and said == []


def test_columns_default_to_source_and_target(tmp_path):
    csv_path = _write(tmp_path / "d.csv", "target,source\nVa !,Go.\n")
    jsonl_path = _write(tmp_path / "d.json.gz", '{"source": "Go.", "target": "Va !"}\n', gzipped=True)
    for path in (csv_path, jsonl_path):
        read, _ = _read(path)
        assert (read.sources, read.targets) == (["Go."], ["Va !"])


def test_positions_read_a_headerless_tsv_or_csv_every_line_a_pair(tmp_path):
    tsv = _write(tmp_path / "h.tsv", "Go.\tVa !\tx\nRun!\tCours !\ty\n")
    read, _ = _read(tsv, source_column="1", target_column="2")
    assert read.sources == ["Go.", "Run!"] and read.lines == [1, 2]
    # Either one as a position is enough; the other defaults to its own position.
    assert _read(tsv, target_column="2")[0].sources == ["Go.", "Run!"]
    reverse, _ = _read(tsv, source_column="2", target_column="1")
    assert reverse.sources == ["Va !", "Cours !"] and reverse.targets == ["Go.", "Run!"]
    third, _ = _read(tsv, source_column="3", target_column="1")
    assert third.sources == ["x", "y"]
    csv_file = _write(tmp_path / "h.csv", 'Go.,"Va, vite !"\n')
    assert _read(csv_file, source_column="1", target_column="2")[0].targets == ["Va, vite !"]
    # A .txt file takes positions too (to translate French into English).
    txt = _write(tmp_path / "h.txt", "Go.\tVa !\n")
    assert _read(txt, source_column="2", target_column="1")[0].sources == ["Va !"]


@pytest.mark.parametrize(
    "name, content, columns, expected",
    [
        # Columns that are not there list those that are.
        ("m.tsv", "en\tfr\nGo.\tVa !\n", ("", ""),
         "line 1 (header) has no column 'source' (columns: en, fr); pass --source_column, or --source_column=1"),
        ("m.csv", "en,fr\nGo.,Va !\n", ("en", "french"), "line 1 (header) has no column 'french' (columns: en, fr); pass --target_column"),
        ("m.jsonl", '{"source": "Go.", "target": "Va !"}\n{"source": "Run!", "tgt": "x"}\n', ("", ""),
         "line 2 has no 'target' field (fields: source, tgt); pass --target_column"),
        # Ragged rows.
        ("r.tsv", "en\tfr\nGo.\tVa !\nRun!\tCours !\textra\n", ("en", "fr"), "line 3 has 3 fields but the header has 2"),
        ("r.txt", "Go.\tVa !\nRun! Cours !\n", ("", ""), "line 2 has 1 field, but --target_column=2 needs at least 2; "
         "each line holds a source and a target separated by a tab"),
        ("r.csv", "Go.,Va !,x\nRun!,Cours !\n", ("3", "1"), "line 2 has 2 fields, but --source_column=3 needs at least 3"),
        # Empty sentences.
        ("e.txt", "Go.\tVa !\n \tCours !\n", ("", ""), "line 2: the source (column 1) is empty; remove the pair or fill it in"),
        ("e.csv", "en,fr\nGo.,Va !\nRun!,\n", ("en", "fr"), "line 3: the target (the 'fr' column) is empty"),
        ("e.jsonl", '{"source": "Go.", "target": "  "}\n', ("", ""), "line 1: the target (the 'target' field) is empty"),
        # JSON lines that are not objects of strings.
        ("j.jsonl", '{"source": "Go.", "target": "Va !"}\n["Run!", "Cours !"]\n', ("", ""),
         'line 2 is a JSON array, not an object; a JSON lines file holds one object per line, such as '
         '{"source": "...", "target": "..."}'),
        ("j.jsonl", '{"source": "Go.", "target": "Va !"}\n{"source": "Run!"\n', ("", ""), "line 2 is not valid JSON"),
        ("j.jsonl", '{"en": "Go.", "fr": 5}\n', ("en", "fr"), "line 1: the 'fr' field is 5, not a string"),
        ("j.jsonl", '{"source": null, "target": "Va !"}\n', ("", ""), "line 1: the 'source' field is null, not a string"),
        # Files without pairs.
        ("z.txt", "", ("", ""), "is empty; it needs at least one pair"),
        ("z.txt", "\n\n", ("", ""), "is empty; it needs at least one pair"),
        ("z.csv", "", ("", ""), "is empty; it needs a header row and at least one pair"),
        ("z.csv", "source,target\n", ("", ""), "has no pairs; it needs at least one row below the header"),
        ("z.jsonl", "\n", ("", ""), "is empty"),
        # Quoting and names.
        ("q.csv", 'source,target\nGo.,"Va !\n', ("", ""), "line 2: a quoted field (\") opened in this row is never closed"),
        ("q.csv", 'source,"target\nGo.,Va !\n', ("", ""), "line 1: a quoted field (\") opened in this row is never closed"),
        ("x.text", "Go.\tVa !\n", ("", ""), "cannot tell the format from the name; use a .txt, .tsv, .csv or .jsonl file"),
        # Column flags that cannot work.
        ("c.jsonl", '{"source": "Go.", "target": "Va !"}\n', ("1", "2"),
         "--source_column=1 is a position, but the fields of a JSON lines file have no order"),
        ("c.txt", "Go.\tVa !\n", ("en", ""), "--source_column=en names a column, but a .txt file has no header row"),
        ("c.tsv", "en\tfr\nGo.\tVa !\n", ("en", "2"), "--target_column=2 is a position but --source_column=en a name"),
        ("c.tsv", "en\tfr\nGo.\tVa !\n", ("en", "en"), "--source_column and --target_column both name 'en'; the source"),
        ("c.tsv", "en\tfr\nGo.\tVa !\n", ("target", ""),
         "both name 'target' (--target_column is empty and defaults to it)"),
        ("c.txt", "Go.\tVa !\n", ("2", ""), "both name column 2 (--target_column is empty and defaults to it)"),
        ("c.txt", "Go.\tVa !\n", ("0", "1"), "--source_column=0: column positions count from 1"),
    ],
)
def test_bad_pair_files_name_the_file_line_and_what_to_do(tmp_path, name, content, columns, expected):
    path = _write(tmp_path / name, content)
    with pytest.raises(InvalidInputError) as error:
        pairs_lib.read_pairs(path, "--valid_data", *columns)
    message = str(error.value)
    assert message.startswith(f"--valid_data={path}") and "\n" not in message
    assert expected in message


def test_a_byte_that_is_not_utf8_or_a_missing_file(tmp_path):
    path = _write(tmp_path / "b.txt", b"Go.\tVa !\nCoffee.\tCaf\xe9.\n")
    with pytest.raises(InvalidInputError, match=r"^--train_data=.*b.txt: line 2, column 12 \(byte offset 20\): byte 0xe9"):
        pairs_lib.read_pairs(path)
    with pytest.raises(InputNotFoundError, match="no such file"):
        pairs_lib.read_pairs(str(tmp_path / "absent.txt"))


def test_cut_off_pairs_are_kept_and_named_once(tmp_path):
    rows = ["Go.\tVa !"] * 20
    # Cut: no final punctuation, or a space before the line end (even after a full stop).
    for line in (2, 4, 6, 8, 10, 12):
        rows[line - 1] = "I see.\tJe vois"
    rows[13] = "Stop.\tArrête. "
    # Not cut: the source does not end a sentence, or the target ends with a closer of some script.
    rows[14] = "Hello\tBonjour"
    rows[15] = "Hello.\t« Bonjour »"
    rows[16] = "Good day.\t今天天气很好。"
    rows[17] = "Is it?\tهل هو؟"
    rows.append("They did it again.\tIls l'ont ")  # Line 21, the last.
    path = _write(tmp_path / "cut.txt", "\n".join(rows) + "\n")
    read, said = _read(path)
    assert len(read.sources) == 21 and read.targets[-1] == "Ils l'ont" and read.targets[13] == "Arrête."
    assert said == [
        f"keraslm: --train_data={path}: 8 pairs look cut off (their source ends a sentence, their target does not): "
        "lines 2, 4, 6, 8, 21 (8 in all; 21 is the last line: a file cut short ends like this); kept — check them, "
        "and remove or complete them if they are truncated"
    ]
    # One cut pair, not the last line; and without `say`, nothing is called.
    one = _write(tmp_path / "one.txt", "Go.\tVa\nRun!\tCours !\n")
    assert _read(one)[1] == [
        f"keraslm: --train_data={one}: 1 pair looks cut off (its source ends a sentence, its target does not): line 1; "
        "kept — check it, and remove or complete it if it is truncated"
    ]
    assert pairs_lib.read_pairs(one).targets == ["Va", "Cours !"]


def test_targets_without_final_punctuation_say_so(tmp_path):
    path = _write(tmp_path / "plain.txt", "Go.\tva\nRun!\tcours\nStop.\tarrête !\n")
    (message,) = _read(path)[1]
    assert message.endswith("most pairs end this way: if the targets are written without final punctuation, ignore this")


def _pairs(rows, path="p.txt"):
    return pairs_lib.Pairs(path, [source for source, _ in rows], [target for _, target in rows], list(range(1, len(rows) + 1)))


@needs_fra
def test_the_split_holds_out_a_share_of_source_sentences_with_all_their_pairs():
    read = pairs_lib.read_pairs(str(FRA))
    train, held_out = pairs_lib.split_by_source(read, 0.1, seed=0)
    sources = set(read.sources)
    assert not set(train.sources) & set(held_out.sources)
    assert set(train.sources) | set(held_out.sources) == sources
    assert sorted(train.lines + held_out.lines) == read.lines and train.lines == sorted(train.lines)
    position = {line: index for index, line in enumerate(read.lines)}
    for side in (train, held_out):
        assert all(read.targets[position[line]] == target for line, target in zip(side.lines, side.targets))
    # Every pair of a held-out source is held out (fra.txt has several translations per sentence).
    held = set(held_out.sources)
    assert len(held_out.sources) == sum(source in held for source in read.sources) > len(held)
    assert abs(len(held) / len(sources) - 0.1) < 0.015
    assert abs(len(set(pairs_lib.split_by_source(read, 0.3, seed=0)[1].sources)) / len(sources) - 0.3) < 0.02
    # Deterministic, seeded, and independent of the order of the lines.
    assert pairs_lib.split_by_source(read, 0.1, seed=0) == (train, held_out)
    assert set(pairs_lib.split_by_source(read, 0.1, seed=1)[1].sources) != held
    rows = list(zip(read.sources, read.targets))
    random.Random(0).shuffle(rows)
    assert set(pairs_lib.split_by_source(_pairs(rows), 0.1, seed=0)[1].sources) == held


def test_the_split_is_the_same_in_another_process(tmp_path):
    rows = [(f"Sentence {index}.", f"Phrase {index}.") for index in range(200)]
    expected = pairs_lib.split_by_source(_pairs(rows), 0.2, seed=7)[1].sources
    script = (
        "import sys; from keraslm import pairs as p\n"
        "rows = [(f'Sentence {i}.', f'Phrase {i}.') for i in range(200)]\n"
        "read = p.Pairs('p.txt', [s for s, _ in rows], [t for _, t in rows], list(range(1, 201)))\n"
        "print('|'.join(p.split_by_source(read, 0.2, seed=7)[1].sources))\n"
    )
    for hash_seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        output = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True,
                                text=True, check=True).stdout
        assert output.strip().split("|") == expected
    assert 20 < len(expected) < 60


def test_a_few_sources_still_split_and_one_source_asks_for_valid_data():
    few = _pairs([("Go.", "Va !"), ("Go.", "Marche !"), ("Run!", "Cours !"), ("Stop!", "Arrête !")])
    for seed in range(5):
        train, held_out = pairs_lib.split_by_source(few, 0.1, seed)
        assert train.sources and len(set(held_out.sources)) == 1
        assert held_out.sources.count("Go.") in (0, 2)
    assert len(set(pairs_lib.split_by_source(few, 0.99, 0)[0].sources)) == 1
    single = _pairs([("Go.", "Va !"), ("Go.", "Marche !")], path="one.txt")
    with pytest.raises(InvalidInputError, match=r"^--train_data=one.txt: every pair has the same source .*give --valid_data"):
        pairs_lib.split_by_source(single, 0.1, 0)
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        pairs_lib.split_by_source(few, 1.0, 0)


def test_references_group_every_target_of_a_source_in_first_seen_order():
    read = _pairs([("Run!", "Cours !"), ("Go.", "Va !"), ("Run!", "Courez !"), ("Go.", "Marche !"), ("Hi.", "Salut.")])
    assert pairs_lib.references(read) == (
        ["Run!", "Go.", "Hi."], [["Cours !", "Courez !"], ["Va !", "Marche !"], ["Salut."]]
    )


def test_the_flag_help_says_names_positions_and_the_txt_rule():
    assert "position counted from 1" in pairs_lib.SOURCE_COLUMN_HELP and ".txt" in pairs_lib.SOURCE_COLUMN_HELP
    assert "no header row" in pairs_lib.SOURCE_COLUMN_HELP and "'target'" in pairs_lib.TARGET_COLUMN_HELP
