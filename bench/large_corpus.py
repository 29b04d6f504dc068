"""Corpora larger than memory: peak resident memory and throughput of tokenizing and of training.

  python bench/large_corpus.py --sizes_mb=10,100 [--train_steps=200]

For each size, builds a corpus by concatenating the shipped tinyshakespeare text (in a scratch
directory), then runs keraslm-train twice in child processes with the tinyshakespeare preset:
  1. a new run with --train_steps=1: trains the tokenizer (on a bounded sample), tokenizes the
     whole corpus into shards (keraslm.token_store prints characters/s and cores busy) and takes one step;
  2. the same command with --train_steps=1+N: resumes on the shards, so it measures training alone
     (tokens/s: the median of metrics.json's 100-step segments after the first, which compiles).
Peak resident memory is each child's ru_maxrss (getrusage of a process that waits for one child
at a time). Prints a Markdown table.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "data", "tinyshakespeare", "input.txt")


def build_corpus(path, size_bytes):
    with open(SHAKESPEARE, encoding="utf-8") as file:
        text = file.read()
    with open(path, "w", encoding="utf-8") as file:
        written = 0
        while written < size_bytes:
            file.write(text)
            written += len(text.encode("utf-8"))
    return os.path.getsize(path)


def run_child(args):
    """Runs keraslm-train; returns (stdout, wall seconds, peak RSS in MiB of that child)."""
    started = time.perf_counter()
    # A fresh waiter per child: RUSAGE_CHILDREN keeps the maximum over all children waited for.
    code = (
        "import resource, subprocess, sys, json;"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr[-3000:],"
        " 'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "keraslm.cli.train", *args],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"keraslm-train failed:\n{result['err']}")
    return result["out"], time.perf_counter() - started, result["rss_kib"] / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes_mb", default="10,100")
    parser.add_argument("--preset", default="configs/tinyshakespeare_char.flags")
    parser.add_argument(
        "--train_steps", type=int, default=500, help="Steps of the training-only run (>= 300: its segments of 100 after the first are timed)."
    )
    parser.add_argument("--scratch", default="", help="Where corpora and runs go (default: a temporary directory).")
    args = parser.parse_args()
    scratch = args.scratch or tempfile.mkdtemp(prefix="keraslm-large-")
    rows = []
    # The preset without its --train_data: a repeated --train_data adds a file, it does not replace one.
    preset = os.path.join(scratch, "preset.flags")
    with open(os.path.join(REPO, args.preset), encoding="utf-8") as source, open(preset, "w", encoding="utf-8") as target:
        target.writelines(line for line in source if not line.startswith("--train_data="))
    try:
        for size_mb in [int(size) for size in args.sizes_mb.split(",")]:
            corpus = os.path.join(scratch, f"corpus-{size_mb}mb.txt")
            size = build_corpus(corpus, size_mb * 1_000_000)
            work_dir = os.path.join(scratch, f"run-{size_mb}mb")
            shutil.rmtree(work_dir, ignore_errors=True)
            common = [f"--flagfile={preset}", f"--train_data={corpus}", f"--work_dir={work_dir}", "--eval_steps=5"]
            out, wall, rss_prepare = run_child([*common, "--train_steps=1", "--eval_interval=1", "--warmup_steps=0"])
            rates = re.findall(r"tokens in \d+ shards; ([\d.]+)M characters/s, ([\d.]+) cores busy", out)
            shards = re.findall(r"([\d,]+) tokens in (\d+) shards", out)
            total = args.train_steps + 1
            _, _, rss_train = run_child([*common, f"--train_steps={total}", "--eval_interval=100"])
            with open(os.path.join(work_dir, "metrics.json"), encoding="utf-8") as file:
                records = json.load(file)["evaluations"]
            # Segments after the resumed run's first, which includes compiling the step.
            tokens_per_second = statistics.median(record["tokens_per_second"] for record in records[2:])
            rows.append(
                f"| {size / 1e6:.0f} MB | {shards[0][0]} in {shards[0][1]} shards | {rates[0][0]}M chars/s, {rates[0][1]} cores "
                f"| {wall:.0f} s | {rss_prepare:,.0f} MiB | {tokens_per_second:,.0f} | {rss_train:,.0f} MiB |"
            )
            print(rows[-1], flush=True)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nPreset `{args.preset}`; training: {args.train_steps} steps resumed on the shards, tokens/s the median "
        "of its 100-step segments after the first.\n\n"
        "| corpus | training tokens | tokenizing | new run, wall (tokenizer + tokens + 1 step) | peak RSS, new run "
        "| training tokens/s | peak RSS, training |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
