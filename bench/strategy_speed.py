"""Training speed under tf.distribute strategies: default vs mirrored over 1 and 2 CPU devices.

  python bench/strategy_speed.py [--preset=configs/tinyshakespeare_char.flags] [--train_steps=300]

Runs keraslm-train in a child process per setting (logical CPU devices must be configured before
TensorFlow starts), one after another, each in a fresh work directory with the preset and
--steps_per_execution=1 --jit_compile=false (what a strategy allows in Keras 3; the default
strategy runs both ways). Reports the median ms/step over the evaluation segments after the first
(which includes tracing) and the final validation loss. Prints a Markdown table.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = (
    ("default, preset (XLA on, 10 steps per execution)", []),
    ("default", ["--jit_compile=false", "--steps_per_execution=1"]),
    ("mirrored, 1 CPU device", ["--jit_compile=false", "--steps_per_execution=1", "--strategy=mirrored", "--num_cpu_devices=1"]),
    ("mirrored, 2 CPU devices", ["--jit_compile=false", "--steps_per_execution=1", "--strategy=mirrored", "--num_cpu_devices=2"]),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="configs/tinyshakespeare_char.flags")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--eval_interval", type=int, default=50)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="keraslm-strategy-")
    rows = []
    try:
        for name, flags in SETTINGS:
            work_dir = os.path.join(scratch, str(len(rows)))
            command = [
                sys.executable, "-m", "keraslm.cli.train", f"--flagfile={args.preset}", f"--work_dir={work_dir}",
                f"--train_steps={args.train_steps}", f"--eval_interval={args.eval_interval}", "--eval_steps=5",
                "--export_dir=", *flags,
            ]
            completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if completed.returncode:
                raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
            with open(os.path.join(work_dir, "metrics.json"), encoding="utf-8") as file:
                records = json.load(file)["evaluations"]
            step_ms = statistics.median(record["ms_per_step"] for record in records[1:])
            rows.append(f"| {name} | `{' '.join(flags) or '(preset)'}` | {step_ms:.1f} | {records[-1]['val_loss']:.4f} |")
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nPreset `{args.preset}`, {args.train_steps} steps, evaluation every {args.eval_interval} on 5 batches; "
        "median ms/step over the segments after the first.\n\n"
        "| strategy | flags | ms/step | val loss at the end |\n| --- | --- | --- | --- |"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
