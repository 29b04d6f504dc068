"""Training through keraslm-train: it learns, leaves a readable work directory, and resumes after kill -9."""

import collections
import json
import math
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_TRANSFORMER, run_cli, train_args


def _unigram_cross_entropy(text):
    """Validation loss of the best context-free model: training character frequencies (add-one)."""
    split = int(len(text) * 0.9)
    train, valid = text[:split], text[split:]
    counts = collections.Counter(train)
    vocabulary = set(train) | set(valid)
    total = len(train) + len(vocabulary)
    return -sum(math.log((counts[character] + 1) / total) for character in valid) / len(valid)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_a_few_dozen_steps_beat_the_unigram_baseline(trained_models, corpora, kind):
    metrics = json.loads((trained_models[kind]["work_dir"] / "metrics.json").read_text())["evaluations"]
    baseline = _unigram_cross_entropy(corpora["english"].read_text(encoding="utf-8"))
    assert [record["step"] for record in metrics] == [60, 120]
    assert metrics[-1]["val_loss"] < baseline - 0.15, (metrics[-1], baseline)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]


def test_work_dir_holds_config_checkpoints_logs_metrics_and_plot(trained_models):
    work_dir = trained_models["transformer"]["work_dir"]
    config = json.loads((work_dir / "config.json").read_text())
    assert config["model"]["model"] == "transformer" and config["model"]["vocabulary_size"] > 2
    assert config["train"]["train_steps"] == 120
    assert (work_dir / "tokenizer" / "vocabulary.txt").is_file()
    assert (work_dir / "checkpoints" / "checkpoint").is_file()
    assert list((work_dir / "logs").glob("events.out.tfevents.*"))
    assert (work_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((work_dir / "metrics.json").read_text())["evaluations"][-1]
    assert {"step", "train_loss", "val_loss", "learning_rate", "ms_per_step", "tokens_per_second"} <= set(record)


def test_rerunning_a_finished_run_trains_nothing_more(trained_models, corpora):
    work_dir = trained_models["transformer"]["work_dir"]
    before = (work_dir / "metrics.json").read_text()
    completed = run_cli("train", *train_args(corpora["english"], work_dir, TINY_TRANSFORMER))
    assert completed.returncode == 0, completed.stderr
    assert "resuming from step 120" in completed.stdout
    assert (work_dir / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    "flag, expected", [("--hidden_dim=64", "--hidden_dim: 32 -> 64"), ("--mixed_precision=mixed_float16", "--mixed_precision: 'none' -> 'mixed_float16'")]
)
def test_other_settings_in_an_existing_work_dir_are_refused(trained_models, corpora, flag, expected):
    work_dir = trained_models["transformer"]["work_dir"]
    completed = run_cli("train", *train_args(corpora["english"], work_dir, TINY_TRANSFORMER, flag))
    assert completed.returncode != 0
    assert expected in completed.stderr and len(completed.stderr.strip().splitlines()) == 1


def test_resume_after_kill_9_ends_where_an_uninterrupted_run_ends(tmp_path, corpora):
    # Dropout on: the resumed run must also continue the dropout masks' random streams.
    args = lambda work_dir: train_args(  # noqa: E731
        corpora["english"], work_dir, TINY_TRANSFORMER, "--train_steps=300", "--eval_interval=25", "--eval_steps=2",
        "--dropout=0.1",
    )
    reference = run_cli("train", *args(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr

    interrupted_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "keraslm.cli.train", *args(interrupted_dir)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (interrupted_dir / "checkpoints" / "checkpoint").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"

    resumed = run_cli("train", *args(interrupted_dir))
    assert resumed.returncode == 0, resumed.stderr
    resumed_from = int(resumed.stdout.split("resuming from step ")[1].split()[0].rstrip(","))
    assert 0 < resumed_from < 300
    final = json.loads((interrupted_dir / "metrics.json").read_text())["evaluations"]
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())["evaluations"]
    assert [record["step"] for record in final] == [record["step"] for record in expected]
    assert final[-1]["step"] == 300
    assert final[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], abs=1e-4)


@pytest.mark.parametrize("model_args", [TINY_TRANSFORMER, ["--model=lstm", "--sequence_length=16", "--hidden_dim=16"]])
def test_mixed_precision_path_trains_and_exports_on_cpu(tmp_path, corpora, model_args):
    """The CUDA settings (mixed_float16; cuDNN-eligible LSTM) must not break where there is no GPU."""
    export_dir = tmp_path / "export"
    completed = run_cli(
        "train",
        *train_args(corpora["english"], tmp_path / "run", model_args, "--train_steps=10", "--eval_interval=5", "--eval_steps=1"),
        "--mixed_precision=mixed_float16",
        f"--export_dir={export_dir}",
    )
    assert completed.returncode == 0, completed.stderr
    loss = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluations"][-1]["val_loss"]
    assert math.isfinite(loss)
    generated = run_cli("generate", f"--model_dir={export_dir}", "--prompt=KING:", "--max_new_tokens=12", "--seed=3")
    assert generated.returncode == 0 and len(generated.stdout) > len("KING:\n")


def test_steps_per_execution_that_does_not_divide_a_segment_runs_every_step(tmp_path, corpora):
    # Segments of 7 steps with 3 steps per execution: 3 + 3 + 1 each. The run must take exactly
    # train_steps optimizer steps and learn as the one-step-per-execution run does.
    import tensorflow as tf  # only to read the checkpoints

    losses = {}
    for steps_per_execution in (1, 3):
        work_dir = tmp_path / f"spe{steps_per_execution}"
        completed = run_cli(
            "train",
            *train_args(
                corpora["english"], work_dir, TINY_TRANSFORMER, "--train_steps=14", "--eval_interval=7",
                "--eval_steps=2", f"--steps_per_execution={steps_per_execution}",
            ),
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        metrics = json.loads((work_dir / "metrics.json").read_text())["evaluations"]
        assert [record["step"] for record in metrics] == [7, 14]
        reader = tf.train.load_checkpoint(str(work_dir / "checkpoints"))
        assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == 14
        losses[steps_per_execution] = [record["val_loss"] for record in metrics]
    assert losses[3] == pytest.approx(losses[1], abs=2e-3)
