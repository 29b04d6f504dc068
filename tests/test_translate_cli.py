"""keraslm-translate and keraslm-evaluate on a tiny trained translation export: one output line per
input line, in order; beam search; one-line errors; held-out BLEU/chrF as JSON."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli


def _version_dir(export_dir):
    """The newest numbered version directory of a base export directory."""
    return max((path for path in Path(export_dir).iterdir() if path.name.isdigit()), key=lambda path: int(path.name))


def _export_config(export_dir):
    return json.loads((_version_dir(export_dir) / "assets" / "config.json").read_text(encoding="utf-8"))


def _training_sources(export_dir, count):
    """Source sentences of the export's own training file, so the model has seen their like."""
    from keraslm.pairs import read_pairs

    train = _export_config(export_dir)["train"]
    pairs = read_pairs(train["train_data"], "--train_data", train["source_column"], train["target_column"])
    sources = list(dict.fromkeys(pairs.sources))
    return (sources * count)[:count] if len(sources) < count else sources[:count]


def _translate(export_dir, *args):
    completed = run_cli("translate", f"--model_dir={export_dir}", *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_one_line_per_text_and_input_line_in_order(seq2seq_export_dir, tmp_path):
    first, second, *others = _training_sources(seq2seq_export_dir, 5)
    input_file = tmp_path / "sources.txt"
    # An empty line gets an empty output line, so outputs line up with inputs; CRLF is one line break.
    input_file.write_text(f"{others[0]}\n\n{others[1]}\r\n{others[2]}\n", encoding="utf-8")
    stdout = _translate(
        seq2seq_export_dir, f"--text={first}", f"--text={second}", f"--input_file={input_file}", "--num_beams=1"
    )
    lines = stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 7, stdout
    lines = lines[:-1]
    assert lines[3] == ""
    # The same sentences the other way round, one per call: the same translations, reversed. A
    # mix-up of batches or of the order within one would show here.
    reversed_stdout = _translate(
        seq2seq_export_dir, *[f"--text={source}" for source in reversed([first, second, *others])], "--num_beams=1",
        "--batch_size=2",
    )
    assert reversed_stdout.splitlines() == [lines[index] for index in (5, 4, 2, 1, 0)]


def test_standard_input_and_output_file(seq2seq_export_dir, tmp_path):
    sources = _training_sources(seq2seq_export_dir, 3)
    output_file = tmp_path / "out.txt"
    completed = subprocess.run(
        [sys.executable, "-m", "keraslm.cli.translate", f"--model_dir={seq2seq_export_dir}", "--input_file=-",
         f"--output_file={output_file}", "--num_beams=1"],
        input="\n".join(sources) + "\n", capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout == ""
    written = output_file.read_text(encoding="utf-8").split("\n")
    assert len(written) == 4 and written[-1] == ""
    texts = [f"--text={source}" for source in sources]
    assert written[:3] == _translate(seq2seq_export_dir, *texts, "--num_beams=1").splitlines()
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]  # No temporary file left behind.


def test_non_utf8_standard_input_names_the_line(seq2seq_export_dir):
    completed = subprocess.run(
        [sys.executable, "-m", "keraslm.cli.translate", f"--model_dir={seq2seq_export_dir}", "--input_file=-"],
        input=b"Hello.\nCaf\xe9.\n", capture_output=True, timeout=300, cwd=REPO,
    )
    assert completed.returncode == 2
    assert completed.stderr.decode().strip() == (
        "keraslm-translate: error: --input_file=- (standard input): line 2: byte 0xe9 is not valid UTF-8; pass UTF-8 "
        "text (e.g. through iconv -f latin1 -t utf-8)"
    )


def test_beam_search_and_sampling(seq2seq_export_dir):
    source = _training_sources(seq2seq_export_dir, 1)[0]
    beams = _translate(seq2seq_export_dir, f"--text={source}", "--num_beams=2", "--length_penalty=1.0", "--max_new_tokens=8")
    assert len(beams.splitlines()) == 1
    # Sampling with a seed repeats itself.
    sampled = [
        _translate(seq2seq_export_dir, f"--text={source}", "--num_beams=1", "--temperature=1.5", "--seed=4") for _ in range(2)
    ]
    assert sampled[0] == sampled[1] and len(sampled[0].splitlines()) == 1


def test_python_api(seq2seq_export_dir):
    import keraslm
    from keraslm.errors import InvalidInputError
    from keraslm.inference import Translation, Translator

    translator = keraslm.load(str(seq2seq_export_dir))
    assert isinstance(translator, Translator)
    source = _training_sources(seq2seq_export_dir, 1)[0]
    [text] = translator.translate(source, num_beams=1)
    assert isinstance(text, str)
    [details] = translator.translate_with_details([source], num_beams=2, max_new_tokens=5)
    assert isinstance(details, Translation) and 1 <= details.num_tokens <= 5 and details.score <= 0
    with pytest.raises(InvalidInputError, match="beam search"):
        translator.translate(source, num_beams=2, temperature=0.5)


def _bad_input(directory):
    (directory / "latin1.txt").write_bytes(b"Hello.\n" + "Caf\u00e9.\n".encode("latin-1"))
    (directory / "empty.txt").write_text("", encoding="utf-8")


# One case of each kind (each starts a process with TensorFlow): the Python API's own checks are
# tested one by one in test_translation_evaluation.py, the file errors in test_pairs.py's readers.
BAD_FLAGS = {
    "nothing to translate": ([], "nothing to translate: give --text (repeatable) or --input_file"),
    "not UTF-8": (
        ["--input_file={d}/latin1.txt"],
        "--input_file={d}/latin1.txt: line 2, column 4 (byte offset 10): byte 0xe9 is not valid UTF-8",
    ),
    "no beams": (["--text=Hi.", "--num_beams=0"], "--num_beams=0 must be an integer between 1 (greedy or sampling) and"),
    "temperature with beams": (
        ["--text=Hi.", "--num_beams=3", "--temperature=0.5"],
        "--temperature applies to sampling; beam search (--num_beams=3) is deterministic",
    ),
    "too many tokens": (
        ["--text=Hi.", "--max_new_tokens=100000"],
        "--max_new_tokens=100000 must be an integer between 1 and this model's limit of",
    ),
    "output directory missing": (
        ["--text=Hi.", "--output_file={d}/no/such/out.txt"], "--output_file={d}/no/such/out.txt: directory"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_input_gives_one_line(seq2seq_export_dir, tmp_path, case):
    _bad_input(tmp_path)
    args, expected = BAD_FLAGS[case]
    completed = run_cli("translate", f"--model_dir={seq2seq_export_dir}", *[arg.format(d=tmp_path) for arg in args])
    assert completed.returncode == 2, completed.stdout
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("keraslm-translate: error: ") and expected.format(d=tmp_path) in lines[0], lines[0]


def test_translate_refuses_a_language_model(trained_models):
    completed = run_cli("translate", f"--model_dir={trained_models['transformer']['export_dir']}", "--text=Hi.")
    assert completed.returncode == 2
    assert "is a language model export, not a translation model; use keraslm-generate" in completed.stderr


def test_evaluate_held_out_prints_json(seq2seq_export_dir, tmp_path):
    train = _export_config(seq2seq_export_dir)["train"]
    output_json = tmp_path / "metrics.json"
    completed = run_cli(
        "evaluate", f"--model_dir={seq2seq_export_dir}", f"--data={train['train_data']}", "--held_out", "--num_beams=2",
        f"--output_json={output_json}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads(completed.stdout.strip().splitlines()[-1])
    assert json.loads(output_json.read_text()) == metrics
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["chrf"] <= 100 and 0 <= metrics["exact_match"] <= 1
    assert metrics["held_out"] is True and metrics["num_beams"] == 2 and metrics["temperature"] is None
    assert "tok:13a" in metrics["bleu_signature"]
    # Only the held-out share of the sources: what training validated on.
    from keraslm.pairs import read_pairs, references, split_by_source

    pairs = read_pairs(train["train_data"], "--data", train["source_column"], train["target_column"])
    _, held_out = split_by_source(pairs, train["valid_fraction"], train["seed"])
    assert metrics["num_sources"] == len(references(held_out)[0]) < len(references(pairs)[0])
    assert metrics["num_pairs"] == len(held_out.sources)


def test_evaluate_held_out_is_refused_for_a_model_trained_with_valid_data(seq2seq_export_dir, tmp_path):
    # A copy of the export whose config says it was trained with --valid_data.
    copy = tmp_path / "export" / "1"
    shutil.copytree(_version_dir(seq2seq_export_dir), copy)
    config = json.loads((copy / "assets" / "config.json").read_text(encoding="utf-8"))
    data = config["train"]["train_data"]
    config["train"]["valid_data"] = "/data/valid.tsv"
    (copy / "assets" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    completed = run_cli("evaluate", f"--model_dir={copy.parent}", f"--data={data}", "--held_out")
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "keraslm-evaluate: error: --held_out: this model was trained with --valid_data=/data/valid.tsv, so it held "
        "nothing out of its training file; pass that file as --data instead (without --held_out)"
    )


def test_evaluate_refuses_translation_flags_for_other_models(trained_models, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    export_dir = trained_models["transformer"]["export_dir"]
    completed = run_cli("evaluate", f"--model_dir={export_dir}", f"--data={data}", "--num_beams=2")
    assert completed.returncode == 2
    assert completed.stderr.strip() == "keraslm-evaluate: error: --num_beams is for translation models; this is a language model"
