"""Faults in work directories and exports: nothing the user had is lost, nothing is half-written.

Each test damages a real run the way a user or a machine would (a deleted or truncated file, a
second process, a read-only directory, a full disk) and checks the one-line error or the recovery,
and that the files the user had are still there.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHAKESPEARE, run_cli

# The smallest run that still checkpoints twice: seconds per invocation.
TINY = [
    "--model=lstm", "--hidden_dim=16", "--num_layers=1", "--sequence_length=16", "--batch_size=4",
    "--eval_interval=10", "--eval_steps=2", "--jit_compile=false", "--seed=3",
]
BIN = Path(sys.executable).parent


def _train(train_data, work_dir, *extra, **kwargs):
    return run_cli("train", f"--train_data={train_data}", f"--work_dir={work_dir}", *TINY, *extra, **kwargs)


def _one_error_line(completed, program="keraslm-train"):
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode != 0, completed.stdout
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), completed.stderr
    assert "Traceback" not in completed.stderr
    return lines[0]


def _digest(directory):
    """Content hash of every file under directory (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return digest.hexdigest()


def _steps(work_dir):
    return [record["step"] for record in json.loads((Path(work_dir) / "metrics.json").read_text())["evaluations"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus):
    """A run trained to step 20 (checkpoints at 10 and 20) and exported once."""
    root = tmp_path_factory.mktemp("base")
    completed = _train(corpus, root / "run", "--train_steps=20", f"--export_dir={root / 'export'}")
    assert completed.returncode == 0, completed.stderr
    return root


@pytest.fixture
def run_copy(base_run, tmp_path):
    shutil.copytree(base_run / "run", tmp_path / "run", symlinks=True)
    return tmp_path / "run"


# === Checkpoints ===


@pytest.mark.parametrize("damage", ["deleted", "garbage", "not utf-8"])
def test_a_lost_checkpoint_index_is_recovered_from_the_files(corpus, run_copy, damage):
    index = run_copy / "checkpoints" / "checkpoint"
    if damage == "deleted":
        index.unlink()
    else:
        index.write_bytes(b"garbage {{{" if damage == "garbage" else b"\xff\xfe")
    completed = _train(corpus, run_copy, "--train_steps=30")
    assert completed.returncode == 0, completed.stderr
    assert "resuming from step 20" in completed.stdout
    assert "missing or unreadable; using the checkpoint files themselves" in completed.stderr
    assert _steps(run_copy) == [10, 20, 30]  # the history before the break is kept
    assert "ckpt-30" in index.read_text()


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(corpus, run_copy, tmp_path):
    data = run_copy / "checkpoints" / "ckpt-20.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    exported = run_cli("export", f"--work_dir={run_copy}", f"--export_dir={tmp_path / 'export'}")
    assert exported.returncode == 0, exported.stderr
    assert "ckpt-20: Read less bytes than requested; restored" in exported.stderr and "ckpt-10 (step 10)" in exported.stderr
    assert json.loads((tmp_path / "export" / "1" / "assets" / "config.json").read_text())["source"]["checkpoint"] == "ckpt-10"

    completed = _train(corpus, run_copy, "--train_steps=20")
    assert completed.returncode == 0, completed.stderr
    assert "resuming from step 10" in completed.stdout
    assert _steps(run_copy) == [10, 20]
    # ckpt-20 was trained again and is whole: the next run resumes from it without a word.
    again = _train(corpus, run_copy, "--train_steps=20")
    assert again.returncode == 0 and "cannot be read" not in again.stderr and "nothing to train" in again.stdout


def test_no_readable_checkpoint_is_refused_and_nothing_changes(corpus, run_copy):
    for data in (run_copy / "checkpoints").glob("*.data-*"):
        data.write_bytes(b"")
    before = _digest(run_copy)
    line = _one_error_line(_train(corpus, run_copy, "--train_steps=30"))
    assert "none of its checkpoints can be read" in line and "nothing was changed" in line
    assert _digest(run_copy) == before


def test_deleted_checkpoints_with_a_history_are_refused(corpus, run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    before = _digest(run_copy)
    line = _one_error_line(_train(corpus, run_copy, "--train_steps=30"))
    assert "records evaluations up to step 20" in line and "holds no checkpoint" in line
    assert _digest(run_copy) == before


# === Tokenizer and config.json ===


def test_a_missing_tokenizer_is_refused_not_retrained(corpus, run_copy, tmp_path):
    shutil.rmtree(run_copy / "tokenizer")
    before = _digest(run_copy)
    # Another corpus would train another vocabulary: the run must not be rewritten with it.
    other = tmp_path / "other.txt"
    other.write_text("abc def\n" * 400, encoding="utf-8")
    line = _one_error_line(_train(other, run_copy, "--train_steps=30"))
    assert "tokenizer/ is missing" in line
    assert _digest(run_copy) == before
    exported = run_cli("export", f"--work_dir={run_copy}", f"--export_dir={tmp_path / 'export'}")
    assert "tokenizer/ is missing" in _one_error_line(exported, "keraslm-export")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object but an array"),
        ('{"task": "lm", "model": {"hidden_dim": "big"}}', "model.hidden_dim is a string ('big'); expected int"),
        ('{"task": "lm", "train": {"jit_compile": 3}}', "train.jit_compile is an integer (3); expected bool or null"),
    ],
)
def test_a_damaged_config_json_gets_one_line(corpus, run_copy, tmp_path, content, expected):
    from keraslm.config import load_run_config
    from keraslm.errors import InvalidInputError

    (run_copy / "config.json").write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=re.escape(expected)):
        load_run_config(str(run_copy / "config.json"))
    if content != "{not json":
        return  # Both commands read config.json through load_run_config: one file shows it, faster.
    before = _digest(run_copy)
    assert expected in _one_error_line(_train(corpus, run_copy, "--train_steps=30"))
    assert _digest(run_copy) == before
    exported = run_cli("export", f"--work_dir={run_copy}", f"--export_dir={tmp_path / 'export'}")
    assert expected in _one_error_line(exported, "keraslm-export")


def test_a_damaged_metrics_json_is_refused_and_nothing_changes(corpus, run_copy):
    (run_copy / "metrics.json").write_text("garbage{", encoding="utf-8")
    before = _digest(run_copy)
    assert "metrics.json cannot be read" in _one_error_line(_train(corpus, run_copy, "--train_steps=30"))
    assert _digest(run_copy) == before


def test_lowering_train_steps_trains_nothing_and_rewrites_nothing(corpus, run_copy):
    before = _digest(run_copy)
    completed = _train(corpus, run_copy, "--train_steps=10")
    assert completed.returncode == 0, completed.stderr
    assert "nothing to train: the run is at step 20 and --train_steps=10" in completed.stdout
    assert "nan" not in completed.stdout
    assert _digest(run_copy) == before


def test_rerunning_with_export_dir_does_not_export_an_identical_version(corpus, base_run, run_copy, tmp_path):
    export_dir = tmp_path / "export"
    first = _train(corpus, run_copy, "--train_steps=20", f"--export_dir={export_dir}")
    second = _train(corpus, run_copy, "--train_steps=20", f"--export_dir={export_dir}")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "already holds ckpt-20 of this run; not exporting it again" in second.stdout
    assert sorted(os.listdir(export_dir)) == ["1"]
    # Training on changes the checkpoint: then a new version is written.
    third = _train(corpus, run_copy, "--train_steps=30", f"--export_dir={export_dir}")
    assert third.returncode == 0 and sorted(os.listdir(export_dir)) == ["1", "2"]


# === Settings that would train a broken model ===


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--beta_1=1", "--beta_1=1.0 must be in [0, 1)"),
        ("--beta_2=1.5", "--beta_2=1.5 must be in [0, 1)"),
        ("--beta_2=-0.1", "--beta_2=-0.1 must be in [0, 1)"),
        ("--learning_rate=nan", "--learning_rate=nan must be a finite number"),
        ("--learning_rate=inf", "--learning_rate=inf must be a finite number"),
        ("--learning_rate=0", "--learning_rate=0.0 must be positive"),
        ("--weight_decay=nan", "--weight_decay=nan must be a finite number"),
        ("--gradient_clip_norm=inf", "--gradient_clip_norm=inf must be a finite number"),
        ("--seed=-5", "--seed=-5 must be between 0 and 4294967295"),
        # Finite in Python, infinite as the float32 the optimizer uses.
        ("--learning_rate=1e300", "--learning_rate=1e+300 is beyond float32's range"),
    ],
)
def test_numeric_flags_are_checked_before_anything_is_written(corpus, tmp_path, flag, expected):
    line = _one_error_line(_train(corpus, tmp_path / "run", "--train_steps=20", flag))
    assert expected in line
    assert os.listdir(tmp_path) == []  # no work directory, no staging directory


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(corpus, run_copy):
    index_before = (run_copy / "checkpoints" / "checkpoint").read_text()
    completed = _train(
        corpus, run_copy, "--train_steps=40", "--learning_rate=1e30", "--min_learning_rate=0", "--warmup_steps=0",
        "--gradient_clip_norm=0",
    )
    line = _one_error_line(completed)
    assert "training diverged" in line and "the last good checkpoint (step 20) is kept" in line
    assert (run_copy / "checkpoints" / "checkpoint").read_text() == index_before
    assert _steps(run_copy) == [10, 20]


def test_a_non_finite_export_temperature_is_refused(base_run, tmp_path):
    for value, expected in (("nan", "must be a finite number"), ("inf", "must be a finite number"), ("1e39", "beyond float32's range")):
        completed = run_cli("export", f"--work_dir={base_run / 'run'}", f"--export_dir={tmp_path / 'export'}", f"--temperature={value}")
        assert expected in _one_error_line(completed, "keraslm-export")
    assert not (tmp_path / "export").exists()


# === Work directories: where they are, who owns them ===


def test_work_dir_dot_and_a_symlink(corpus, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    completed = subprocess.run(
        [str(BIN / "keraslm-train"), f"--train_data={corpus}", "--work_dir=.", *TINY, "--train_steps=10"],
        capture_output=True, text=True, cwd=here, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert (here / "config.json").is_file() and not [name for name in os.listdir(here) if "tmp" in name or "staging" in name]

    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    completed = _train(corpus, tmp_path / "link", "--train_steps=10")
    assert completed.returncode == 0, completed.stderr
    assert (target / "config.json").is_file() and (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["here", "link", "target"]


def test_a_second_run_on_the_same_work_dir_is_refused_and_kill_9_is_recovered(corpus, tmp_path):
    work_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "keraslm.cli.train", f"--train_data={corpus}", f"--work_dir={work_dir}", *TINY,
         "--train_steps=100000", "--eval_interval=20"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (work_dir / "checkpoints" / "checkpoint").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not reach a checkpoint"
            time.sleep(0.5)
        second = _train(corpus, work_dir, "--train_steps=100000", "--eval_interval=20")
        assert "is in use by another keraslm-train run" in _one_error_line(second)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead run's lock: the next run resumes.
    resumed = _train(corpus, work_dir, "--train_steps=20", "--eval_interval=20")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stdout or "nothing to train" in resumed.stdout


def test_kill_9_while_tokenizing_a_new_run_resumes_the_tokens(tmp_path):
    """keraslm-train killed after its first token shard: the rerun trains the same tokenizer,
    keeps that shard, tokenizes the rest and trains; the run is as if never interrupted."""
    big = tmp_path / "big.txt"
    big.write_text(SHAKESPEARE.read_text(encoding="utf-8") * 6, encoding="utf-8")  # 6.7M characters: 2 shards
    work_dir = tmp_path / "run"
    args = [f"--train_data={big}", f"--work_dir={work_dir}", *TINY, "--train_steps=10"]
    first = subprocess.Popen(
        [sys.executable, "-m", "keraslm.cli.train", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not list(work_dir.glob("tokens/train-*/progress.json")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not write a shard"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (store,) = work_dir.glob("tokens/train-*")
    assert not (store / "manifest.json").exists() and not (work_dir / "config.json").exists()
    first_shard = (store / "shard-00000.bin").stat().st_mtime_ns
    resumed = run_cli("train", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stdout
    assert (store / "shard-00000.bin").stat().st_mtime_ns == first_shard
    assert sum(json.loads((store / "manifest.json").read_text())["counts"]) == int(len(big.read_text()) * 0.9)
    assert _steps(work_dir) == [10]


def test_leftovers_of_killed_runs_and_exports_are_removed(corpus, base_run, tmp_path):
    # What kill -9 leaves: a staging directory inside a new work directory (tokenizer training)
    # and a .tmp-export-<pid>-* directory in an export directory (a PID that cannot exist).
    work_dir = tmp_path / "run"
    (work_dir / ".staging-4194305" / "tokenizer").mkdir(parents=True)
    (work_dir / ".staging-4194305" / "tokenizer" / "vocabulary.txt").write_text("x\n")
    completed = _train(corpus, work_dir, "--train_steps=10")
    assert completed.returncode == 0, completed.stderr
    assert not [name for name in os.listdir(work_dir) if name.startswith(".staging")]

    export_dir = tmp_path / "export"
    (export_dir / ".tmp-export-4194305-abc" / "saved_model").mkdir(parents=True)
    exported = run_cli("export", f"--work_dir={work_dir}", f"--export_dir={export_dir}")
    assert exported.returncode == 0, exported.stderr
    assert sorted(os.listdir(export_dir)) == ["1"]


# === The machine says no: permissions, a full disk ===


def _without_root_override():
    """A command prefix that drops root's permission to ignore file modes (CAP_DAC_OVERRIDE)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return []
    if not setpriv:
        pytest.skip("running as root without setpriv: cannot drop root's override of file permissions")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_read_only_directories_get_one_line(corpus, base_run, tmp_path):
    prefix = _without_root_override()
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copytree(base_run / "run", locked / "run")
    os.chmod(locked, 0o555)
    try:
        train = subprocess.run(
            [*prefix, str(BIN / "keraslm-train"), f"--train_data={corpus}", f"--work_dir={locked / 'new'}", *TINY],
            capture_output=True, text=True, timeout=300,
        )
        assert "cannot create it (Permission denied)" in _one_error_line(train)
        export = subprocess.run(
            [*prefix, str(BIN / "keraslm-export"), f"--work_dir={locked / 'run'}", f"--export_dir={locked / 'export'}"],
            capture_output=True, text=True, timeout=300,
        )
        assert "permission denied" in _one_error_line(export, "keraslm-export").lower()
        assert sorted(os.listdir(locked)) == ["run"]
    finally:
        os.chmod(locked, 0o755)


def test_a_checkpoint_that_cannot_be_written_says_what_was_kept(corpus, run_copy):
    prefix = _without_root_override()
    config_before = (run_copy / "config.json").read_bytes()
    os.chmod(run_copy / "checkpoints", 0o555)
    try:
        completed = subprocess.run(
            [*prefix, str(BIN / "keraslm-train"), f"--train_data={corpus}", f"--work_dir={run_copy}", *TINY, "--train_steps=30"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        os.chmod(run_copy / "checkpoints", 0o755)
    line = _one_error_line(completed)
    assert "permission denied while saving step 30" in line and "kept: the checkpoint of step 20" in line
    assert (run_copy / "config.json").read_bytes() == config_before
    resumed = _train(corpus, run_copy, "--train_steps=30")
    assert resumed.returncode == 0 and "resuming from step 20" in resumed.stdout
    assert _steps(run_copy) == [10, 20, 30]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: too small for a checkpoint of the model below."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_while_training_and_exporting(corpus, base_run, small_disk, tmp_path):
    work_dir = small_disk / "run"
    # 2 LSTM layers of 256: several MB of weights and optimizer slots per checkpoint.
    completed = _train(corpus, work_dir, "--train_steps=10", "--hidden_dim=256", "--num_layers=2")
    line = _one_error_line(completed)
    assert "no space left on device while saving step 10" in line and "kept: the tokenizer and config.json" in line
    assert (work_dir / "config.json").is_file() and (work_dir / "tokenizer" / "tokenizer.json").is_file()
    assert not [name for name in os.listdir(work_dir) if ".tmp" in name]

    exported = run_cli("export", f"--work_dir={base_run / 'run'}", f"--export_dir={small_disk / 'export'}")
    if exported.returncode == 0:
        pytest.fail("the export fit on the small disk: make the disk smaller")
    line = _one_error_line(exported, "keraslm-export")
    assert "no space left on device" in line
    assert [name for name in os.listdir(small_disk / "export") if not name.startswith(".tmp-export")] == []
    assert not os.listdir(small_disk / "export")


# === What a newcomer runs first ===


@pytest.mark.parametrize("command", ["keraslm-train", "keraslm-export", "keraslm-generate", "keraslm-evaluate"])
def test_installed_commands_list_their_flags_in_help(command):
    for help_flag in ("--helpshort", "--help"):
        completed = subprocess.run([str(BIN / command), help_flag], capture_output=True, text=True, timeout=120)
        # absl's help flags exit with status 1 by design.
        assert "Traceback" not in completed.stderr
        listed = [line.split(":")[0].strip() for line in completed.stdout.splitlines() if line.startswith("  --")]
        expected = {"keraslm-train": "--train_data", "keraslm-export": "--export_dir"}.get(command, "--model_dir")
        assert expected in listed, f"{command} {help_flag}:\n{completed.stdout[:2000]}"


def test_a_closed_stdout_ends_quietly(base_run):
    process = subprocess.Popen(
        [str(BIN / "keraslm-generate"), f"--model_dir={base_run / 'export'}", "--prompt=A", "--max_new_tokens=5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()  # as `| head -1` does once it has its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141
    assert stderr == ""
