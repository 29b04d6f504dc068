"""Shared fixtures: small slices of the bundled corpora, tiny trained models, subprocess helpers."""

import csv
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from keraslm.serving.client import RestClient, ServingError

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


# A translation task a tiny model learns exactly in seconds: reverse a string of a few letters.
REVERSE_LETTERS = "abcdef"
TINY_SEQ2SEQ = [
    "--task=seq2seq", "--model=transformer", "--tokenizer=char", "--sequence_length=12", "--num_layers=2",
    "--num_heads=4", "--hidden_dim=48", "--batch_size=64", "--train_steps=700", "--eval_interval=350",
    "--learning_rate=3e-3", "--seed=7",
]


def reverse_pairs(count, seed, lengths=(1, 6)):
    """[(source, reversed source)] of random strings over REVERSE_LETTERS."""
    import random

    generator = random.Random(seed)
    words = ["".join(generator.choice(REVERSE_LETTERS) for _ in range(generator.randint(*lengths))) for _ in range(count)]
    return [(word, word[::-1]) for word in words]


@pytest.fixture(scope="session")
def seq2seq_run(tmp_path_factory):
    """A tiny Transformer translation model that reverses strings, trained through the CLI and
    exported once per session: {"work_dir", "export_dir", "train_data", "stdout"}."""
    root = tmp_path_factory.mktemp("seq2seq")
    train_data = root / "reverse.tsv"
    train_data.write_text(
        "source\ttarget\n" + "".join(f"{source}\t{target}\n" for source, target in reverse_pairs(3000, seed=0)),
        encoding="utf-8",
    )
    work_dir, export_dir = root / "run", root / "export"
    completed = run_cli(
        "train", *TINY_SEQ2SEQ, f"--train_data={train_data}", f"--work_dir={work_dir}", f"--export_dir={export_dir}"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"work_dir": work_dir, "export_dir": export_dir, "train_data": train_data, "stdout": completed.stdout}


@pytest.fixture(scope="session")
def seq2seq_export_dir(seq2seq_run):
    return seq2seq_run["export_dir"]


# === keraslm-serve in a subprocess (test_serving.py, test_playground.py) ===


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


START_TIMEOUT = 120


class ServeProcess:
    """keraslm-serve in a subprocess; stderr goes to a file the test can read."""

    def __init__(self, tmp_path, *args, wait_for=("clf",), grpc=False):
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keraslm.cli.serve", f"--rest_api_port={self.port}", f"--port={self.grpc_port}", *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = RestClient(self.url, timeout=60)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"keraslm-serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                for name in (wait_for,) if isinstance(wait_for, str) else wait_for:
                    self.client.status(name)
                break
            except (OSError, ServingError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"keraslm-serve did not answer within {START_TIMEOUT} s:\n{self.log()[-3000:]}")
                time.sleep(0.3)

    def log(self):
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def raw(self, method, path, body=b"", headers=None):
        """(status, parsed JSON or text) for a request sent as given, without the client's quoting."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            text = response.read().decode("utf-8", errors="replace")
        finally:
            connection.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def metric(self, prefix):
        with urllib.request.urlopen(self.url + "/monitoring/prometheus/metrics", timeout=30) as response:
            text = response.read().decode("utf-8")
        return [line for line in text.splitlines() if line.startswith(prefix)]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
