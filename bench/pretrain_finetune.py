"""How a classifier's accuracy grows with pretraining: fine-tune from each checkpoint a pretraining
run kept, and report accuracy against pretraining steps and tokens, with the run's tokens/s.

  python bench/pretrain_finetune.py --pretrained=runs/reviews_lm --preset=configs/sst2_finetune.flags
  python bench/pretrain_finetune.py --pretrained=runs/reviews_lm --preset=configs/imdb_finetune.flags --steps=12000

The pretraining run (keraslm-train --flagfile=configs/reviews_lm_pretrain.flags) keeps its last
three checkpoints (one per evaluation). For each one asked for, a copy of the run that ends at that
checkpoint is made under a temporary directory, and `keraslm-train --flagfile=PRESET
--init_from=<copy>` fine-tunes from it into a fresh work directory; the accuracy is the fine-tuned
run's last validation accuracy (the preset's held-out data, as training measured it). Pretraining
figures (tokens/s per segment) come from the pretraining run's metrics.json.

--from_scratch adds the baseline at the same budget: the preset's data, steps, batch and schedule
with no --init_from, the pretraining run's model and tokenizer settings (a tokenizer trained on the
classifier's own training text; the LSTM bidirectional, the from-scratch default).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="The pretraining run's work directory.")
    parser.add_argument("--preset", required=True, help="A fine-tuning --flagfile preset (--task=classify --init_from=...).")
    parser.add_argument("--steps", default="", help="Comma-separated pretraining checkpoints to start from; empty: every kept one.")
    parser.add_argument("--from_scratch", action="store_true", help="Also train the same classifier without pretraining.")
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def kept_steps(pretrained):
    directory = os.path.join(pretrained, "checkpoints")
    return sorted(int(name[5:-6]) for name in os.listdir(directory) if name.startswith("ckpt-") and name.endswith(".index"))


def copy_ending_at(pretrained, step, destination):
    """A copy of the run whose newest checkpoint is `step` (the later ones left out)."""
    shutil.copytree(pretrained, destination, ignore=shutil.ignore_patterns("logs", "*.png"))
    directory = os.path.join(destination, "checkpoints")
    for name in os.listdir(directory):
        if name.startswith("ckpt-") and int(name[5:].split(".", 1)[0]) > step:
            os.remove(os.path.join(directory, name))
    with open(os.path.join(directory, "checkpoint"), "w", encoding="utf-8") as file:
        file.write(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')


def scratch_flags(config):
    """The pretraining run's model and tokenizer settings, for a classifier trained without it."""
    model, tokenizer = config["model"], config["tokenizer"]
    return [
        "--init_from=", "--freeze_steps=0", f"--model={model['model']}", f"--num_layers={model['num_layers']}",
        f"--hidden_dim={model['hidden_dim']}", f"--tokenizer={tokenizer['tokenizer']}",
        f"--vocabulary_size={tokenizer['vocabulary_size']}", f"--lowercase={tokenizer['lowercase']}",
        f"--strip_markup={tokenizer['strip_markup']}",
    ]


def fine_tune(preset, init_flags, work_dir):
    command = [
        sys.executable, "-m", "keraslm.cli.train", f"--flagfile={preset}", *init_flags,
        f"--work_dir={work_dir}", "--export_dir=",
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    if completed.returncode:
        sys.exit(completed.stderr[-3000:])
    with open(os.path.join(work_dir, "metrics.json"), encoding="utf-8") as file:
        records = json.load(file)["evaluations"]
    return records, time.perf_counter() - started


def main():
    args = parse_args()
    pretrained = os.path.join(REPO, args.pretrained)
    with open(os.path.join(pretrained, "config.json"), encoding="utf-8") as file:
        config = json.load(file)
    with open(os.path.join(pretrained, "metrics.json"), encoding="utf-8") as file:
        pretraining = json.load(file)["evaluations"]
    tokens_per_step = config["train"]["batch_size"] * config["model"]["sequence_length"]
    steps = [int(step) for step in args.steps.split(",")] if args.steps else kept_steps(pretrained)
    rows = []
    with tempfile.TemporaryDirectory(prefix="keraslm-bench-") as temporary:
        if args.from_scratch:
            records, wall = fine_tune(args.preset, scratch_flags(config), os.path.join(temporary, "from_scratch"))
            curve = ", ".join(f"{record['step']}: {record['val_accuracy']:.4f}" for record in records)
            rows.append(f"| 0 (from scratch) | 0 | | | **{records[-1]['val_accuracy']:.4f}** | {curve} | {wall:.0f} s |")
            print(rows[-1], flush=True)
        for step in steps:
            copy = os.path.join(temporary, f"pretrained-{step}")
            copy_ending_at(pretrained, step, copy)
            records, wall = fine_tune(args.preset, [f"--init_from={copy}"], os.path.join(temporary, f"fine_tuned-{step}"))
            pretrained_record = next(record for record in pretraining if record["step"] == step)
            curve = ", ".join(f"{record['step']}: {record['val_accuracy']:.4f}" for record in records)
            rows.append(
                f"| {step:,} | {step * tokens_per_step / 1e6:.1f} M | {pretrained_record['val_loss']:.4f} | "
                f"{pretrained_record['elapsed_seconds'] / 60:.0f} min | **{records[-1]['val_accuracy']:.4f}** | "
                f"{curve} | {wall:.0f} s |"
            )
            print(rows[-1], flush=True)
    rates = [record["tokens_per_second"] for record in pretraining]
    body = (
        (f"{args.note}\n\n" if args.note else "")
        + f"Pretraining run: `{args.pretrained}` (--task={config['task']}, --model={config['model']['model']}, "
        f"{config['model']['num_layers']}x{config['model']['hidden_dim']}, {config['tokenizer']['tokenizer']} "
        f"{config['model']['vocabulary_size']:,}), {tokens_per_step:,} tokens per step; tokens/s per segment: "
        + ", ".join(f"{rate:,.0f}" for rate in rates)
        + ".\n\n| pretraining steps | tokens | LM val loss | pretraining wall | fine-tuned accuracy | "
        "accuracy per evaluation | fine-tuning wall |\n| --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
    )
    common.report(f"Pretraining then fine-tuning: {os.path.basename(args.preset)}", body, args.no_write)


if __name__ == "__main__":
    main()
