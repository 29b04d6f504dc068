"""Shared fixtures: small slices of the bundled corpora, tiny trained models, subprocess helpers."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare" / "input.txt"
WAIMAI = REPO / "data" / "waimai10k" / "waimai_10k.csv"
CHINESE_SENTENCE = "今天天气很好，适合出去游玩。"
ENGLISH_SAMPLE = "First Citizen:\nBefore we proceed any further,  hear me speak.\n\nAll:\nSpeak, speak."

# Tiny model shapes: seconds to train, big enough to learn character statistics.
TINY_TRANSFORMER = [
    "--model=transformer", "--sequence_length=32", "--num_layers=2", "--num_heads=2", "--hidden_dim=32",
]
# LSTMs sit on the unigram plateau longer; a higher learning rate gets them off it in 120 steps.
TINY_LSTM = ["--model=lstm", "--sequence_length=32", "--num_layers=2", "--hidden_dim=48", "--learning_rate=1e-2"]


def run_cli(command, *args, timeout=300, env=None):
    """Runs `python -m keraslm.cli.<command> args...`; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", f"keraslm.cli.{command}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def run_fresh_python(code, timeout=180):
    """Runs code in a new interpreter and returns the JSON object its last stdout line prints."""
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def corpora(tmp_path_factory):
    """english.txt (a 60 KB slice of tinyshakespeare), chinese.txt (waimai reviews), mixed.txt."""
    directory = tmp_path_factory.mktemp("corpora")
    english = SHAKESPEARE.read_text(encoding="utf-8")[:60_000]
    with open(WAIMAI, encoding="utf-8", newline="") as file:
        reviews = [row["review"] for row in csv.DictReader(file)][:600]
    chinese = "\n".join(reviews) + "\n" + CHINESE_SENTENCE + "\n"
    paths = {"english": directory / "english.txt", "chinese": directory / "chinese.txt", "mixed": directory / "mixed.txt"}
    paths["english"].write_text(english, encoding="utf-8")
    paths["chinese"].write_text(chinese, encoding="utf-8")
    paths["mixed"].write_text(english[:20_000] + "\n" + chinese, encoding="utf-8")
    return paths


def train_args(train_data, work_dir, model_args, *extra):
    return [
        f"--train_data={train_data}",
        f"--work_dir={work_dir}",
        "--tokenizer=char",
        "--batch_size=16",
        "--train_steps=120",
        "--eval_interval=60",
        "--learning_rate=3e-3",
        "--seed=7",
        *model_args,
        *extra,
    ]


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory, corpora):
    """A tiny Transformer and a tiny LSTM trained through the CLI and exported, once per session."""
    root = tmp_path_factory.mktemp("trained")
    models = {}
    for kind, model_args in (("transformer", TINY_TRANSFORMER), ("lstm", TINY_LSTM)):
        work_dir, export_dir = root / f"{kind}_run", root / f"{kind}_export"
        completed = run_cli("train", *train_args(corpora["english"], work_dir, model_args, f"--export_dir={export_dir}"))
        assert completed.returncode == 0, completed.stderr[-3000:]
        models[kind] = {"work_dir": work_dir, "export_dir": export_dir, "stdout": completed.stdout}
    return models
