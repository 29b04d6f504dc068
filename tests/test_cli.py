"""Bad input gets one line on stderr that names the file, line or flag, a non-zero exit, and no debris."""

import re

import pytest

from conftest import run_cli

CHARS_100 = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\nthe slings.\n"


def _files(tmp_path):
    files = {
        "good": CHARS_100 * 40,
        "empty": "",
        "short": CHARS_100[:50],
    }
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes(CHARS_100.encode() * 3 + "café\n".encode("latin-1"))
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "no_saved_model").mkdir()
    return tmp_path


CASES = {
    "missing file": (["--train_data={d}/missing.txt"], "--train_data={d}/missing.txt: no such file"),
    "directory as file": (["--train_data={d}/a_directory"], "--train_data={d}/a_directory is a directory"),
    "empty corpus": (["--train_data={d}/empty.txt"], "--train_data={d}/empty.txt is empty"),
    # Three copies of three lines, then "caf" and the Latin-1 byte of "é".
    "not utf-8": (
        ["--train_data={d}/latin1.txt"],
        f"line 10, column 4 (byte offset {3 * len(CHARS_100.encode()) + 3}): byte 0xe9 is not valid UTF-8",
    ),
    "sequence longer than corpus": (
        ["--train_data={d}/short.txt", "--sequence_length=64"],
        "--train_data={d}/short.txt has 45 tokens, fewer than --sequence_length=64 + 1",
    ),
    "validation text too short": (
        ["--train_data={d}/good.txt", "--valid_data={d}/short.txt", "--sequence_length=64"],
        "validation text {d}/short.txt has 50 tokens",
    ),
    "heads do not divide": (["--train_data={d}/good.txt", "--hidden_dim=130", "--num_heads=4"], "--hidden_dim=130 is not divisible by --num_heads=4"),
    "unknown tokenizer": (["--train_data={d}/good.txt", "--tokenizer=bpe"], "flag --tokenizer=bpe: value should be one of"),
    "unknown model": (["--train_data={d}/good.txt", "--model=gru"], "flag --model=gru: value should be one of"),
    "no train data": ([], "--train_data is required"),
    "stray argument": (["--train_data={d}/good.txt", "extra"], "unexpected argument 'extra'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_keraslm_train_bad_input(tmp_path, case):
    directory = _files(tmp_path)
    args, expected = CASES[case]
    work_dir = directory / "run"
    completed = run_cli("train", *[arg.format(d=directory) for arg in args], f"--work_dir={work_dir}", "--train_steps=5")
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("keraslm-train: error: ")
    assert expected.format(d=directory) in lines[0]
    assert not work_dir.exists()
    assert not [path.name for path in directory.iterdir() if ".tmp" in path.name]


def test_keraslm_train_needs_a_work_dir(tmp_path):
    directory = _files(tmp_path)
    completed = run_cli("train", f"--train_data={directory}/good.txt")
    assert completed.returncode != 0 and completed.stderr.strip() == (
        "keraslm-train: error: --work_dir is required: the directory for checkpoints and logs (rerun to resume)"
    )


@pytest.mark.parametrize(
    "model_dir, expected",
    [
        ("{d}/no_saved_model", "--model_dir={d}/no_saved_model has no saved_model.pb"),
        ("{d}/absent", "--model_dir={d}/absent: no such directory"),
    ],
)
def test_keraslm_generate_without_a_saved_model(tmp_path, model_dir, expected):
    directory = _files(tmp_path)
    completed = run_cli("generate", f"--model_dir={model_dir.format(d=directory)}", "--prompt=hi")
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines() == [f"keraslm-generate: error: {expected.format(d=directory)}"] or (
        len(completed.stderr.strip().splitlines()) == 1 and expected.format(d=directory) in completed.stderr
    )


def test_keraslm_export_without_training(tmp_path):
    directory = _files(tmp_path)
    completed = run_cli("export", f"--work_dir={directory}/a_directory", f"--export_dir={directory}/out")
    assert completed.returncode != 0
    assert len(completed.stderr.strip().splitlines()) == 1 and "has no config.json" in completed.stderr
    assert not (directory / "out").exists()


def test_every_flag_has_help_text():
    for command in ("train", "export", "generate"):
        completed = run_cli(command, "--helpshort")
        assert "Traceback" not in completed.stderr
        # absl lists each flag as "  --name: help"; wrapped help continues on indented lines.
        flag_lines = [line for line in completed.stdout.splitlines() if re.match(r"^  --\w+:", line)]
        assert len(flag_lines) >= 3, completed.stdout
        for line in flag_lines:
            assert line.split(":", 1)[1].strip(), f"{command}: {line}"


def test_keraslm_generate_prompts_samples_and_controls(trained_models, tmp_path):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("KING:\n\nQUEEN:\n", encoding="utf-8")
    completed = run_cli(
        "generate", f"--model_dir={trained_models['transformer']['export_dir']}", "--prompt=ROMEO:",
        f"--prompt_file={prompt_file}", "--num_samples=2", "--max_new_tokens=20", "--top_k=5", "--top_p=0.9",
        "--repetition_penalty=1.2", "--stop=\n\n", "--seed=7",
    )
    assert completed.returncode == 0, completed.stderr
    headers = [line for line in completed.stdout.splitlines() if line.startswith("=== ")]
    assert headers == [f"=== prompt {p}, sample {s} ===" for p in (1, 2, 3) for s in (1, 2)]
    samples = re.split(r"=== prompt \d, sample \d ===\n", completed.stdout)[1:]
    assert [sample.split(":")[0] for sample in samples] == ["ROMEO"] * 2 + ["KING"] * 2 + ["QUEEN"] * 2
    for sample in samples:
        assert "\n\n" not in sample[:-1]  # cut before the stop string (the last newline is print's)
    beams = run_cli("generate", f"--model_dir={trained_models['transformer']['export_dir']}", "--prompt=ROMEO:",
                    "--num_beams=3", "--max_new_tokens=10")
    assert beams.returncode == 0 and beams.stdout.startswith("ROMEO:")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--max_new_tokens=5000"], "--max_new_tokens=5000 is above this model's limit of 4096"),
        (["--seed=18446744073709551616"], "does not fit in a signed 64-bit integer"),
        (["--top_p=0"], "--top_p=0.0 must be in (0, 1]"),
        (["--max_new_tokens=0"], "--max_new_tokens=0 must be at least 1"),
        (["--num_samples=2", "--num_beams=2"], "--num_samples applies to sampling"),
        (["--prompt_file=/nonexistent/prompts.txt"], "--prompt_file=/nonexistent/prompts.txt: no such file"),
    ],
)
def test_keraslm_generate_bad_controls(trained_models, args, expected):
    completed = run_cli("generate", f"--model_dir={trained_models['lstm']['export_dir']}", *args)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], completed.stderr


def test_keraslm_evaluate_bad_input(trained_models, tmp_path):
    (tmp_path / "one.txt").write_text("F", encoding="utf-8")
    cases = [
        ([f"--data={tmp_path}/missing.txt"], "--data=" + str(tmp_path) + "/missing.txt: no such file"),
        ([f"--data={tmp_path}/one.txt"], "fewer than 2 tokens"),
        ([], "--data is required"),
        ([f"--data={tmp_path}/one.txt", f"--output_json={tmp_path}/no/such/dir/m.json"], "does not exist"),
    ]
    for args, expected in cases:
        completed = run_cli("evaluate", f"--model_dir={trained_models['lstm']['export_dir']}", *args)
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode != 0 and len(lines) == 1 and expected in lines[0], completed.stderr


def test_paths_that_are_files_where_directories_belong(tmp_path, trained_models):
    directory = _files(tmp_path)
    a_file = directory / "good.txt"
    completed = run_cli("train", f"--train_data={a_file}", f"--work_dir={a_file}")
    assert completed.returncode != 0 and "--work_dir=" in completed.stderr and "is a file" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert not [path.name for path in directory.iterdir() if ".tmp" in path.name]
    exported = run_cli("export", f"--work_dir={trained_models['lstm']['work_dir']}", f"--export_dir={a_file}")
    assert exported.returncode != 0 and "--export_dir=" in exported.stderr and "is a file" in exported.stderr
