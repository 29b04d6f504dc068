"""A classifier preset end to end: training time and examples/s, accuracy on held-out data, and the
exported classifier's latency at batch 1 and throughput at batch 64.

  python bench/classify.py --preset=configs/sst2_lstm.flags --eval_data=data/sst2/dev.tsv
  python bench/classify.py --preset=configs/waimai10k_lstm.flags            # its own seeded split
  python bench/classify.py --model_dir=saved_models/sst2 --eval_data=...     # an export only

Training runs `keraslm-train --flagfile=PRESET` as a subprocess (what a user runs; a finished run
in the preset's work directory trains nothing, so delete it first or pass --work_dir). Accuracy is
the export's (keraslm-evaluate's figure) on --eval_data, or else on the preset's validation split
as training measured it. Latency: the median of --repeats single-text calls through
keraslm.load(...).classify (texts from the evaluation data, one at a time, after a warm-up);
throughput: texts per second over batches of 64. The machine is shared: compare figures from one
run only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="", help="A classify --flagfile preset to train with keraslm-train.")
    parser.add_argument("--model_dir", default="", help="Measure this export instead of training (no preset needed).")
    parser.add_argument("--eval_data", default="", help="Labelled file for accuracy (keraslm-evaluate); empty: the run's validation split.")
    parser.add_argument("--text_column", default="", help="As keraslm-evaluate's flag.")
    parser.add_argument("--label_column", default="label", help="As keraslm-evaluate's flag.")
    parser.add_argument("--repeats", type=int, default=50, help="Single-text calls for the batch-1 latency.")
    parser.add_argument("--batches", type=int, default=10, help="Batches of 64 for the throughput.")
    parser.add_argument("--extra_flag", action="append", default=[], help="More keraslm-train flags (repeatable).")
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def _flag(preset, name):
    """A flag's value in a --flagfile preset (the last occurrence), or None."""
    value = None
    with open(preset, encoding="utf-8") as file:
        for line in file:
            line = line.strip()
            if line.startswith(f"--{name}="):
                value = line.split("=", 1)[1]
    return value


def train(args):
    """Runs keraslm-train on the preset; returns (export dir, the run's metrics records, wall seconds)."""
    command = [sys.executable, "-m", "keraslm.cli.train", f"--flagfile={args.preset}", *args.extra_flag]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, text=True)
    wall = time.perf_counter() - started
    if completed.returncode:
        sys.exit(f"keraslm-train failed ({completed.returncode})")
    overrides = dict(flag[2:].split("=", 1) for flag in args.extra_flag if flag.startswith("--") and "=" in flag)
    work_dir = overrides.get("work_dir") or _flag(args.preset, "work_dir")
    export_dir = overrides.get("export_dir") or _flag(args.preset, "export_dir")
    with open(os.path.join(REPO, work_dir, "metrics.json"), encoding="utf-8") as file:
        records = json.load(file)["evaluations"]
    return os.path.join(REPO, export_dir), records, wall


def evaluate(args, model_dir):
    command = [
        sys.executable, "-m", "keraslm.cli.evaluate", f"--model_dir={model_dir}", f"--data={args.eval_data}",
        f"--text_column={args.text_column}", f"--label_column={args.label_column}",
    ]
    completed = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    if completed.returncode:
        sys.exit(completed.stderr)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def speed(args, model_dir, texts):
    import keraslm

    classifier = keraslm.load(model_dir)
    classifier.classify(texts[:1])  # The first call prepares the graph.
    single = []
    for index in range(args.repeats):
        started = time.perf_counter()
        classifier.classify([texts[index % len(texts)]])
        single.append(time.perf_counter() - started)
    batch = [texts[(index * 64 + offset) % len(texts)] for index in range(args.batches) for offset in range(64)]
    classifier.classify(batch[:64])
    started = time.perf_counter()
    for index in range(args.batches):
        classifier.classify(batch[index * 64 : (index + 1) * 64])
    throughput = 64 * args.batches / (time.perf_counter() - started)
    return statistics.median(single) * 1000, min(single) * 1000, throughput, classifier


def main():
    args = parse_args()
    if not args.preset and not args.model_dir:
        sys.exit("give --preset (train, then measure) or --model_dir (measure an export)")
    records, wall = [], None
    model_dir = args.model_dir
    if args.preset:
        model_dir, records, wall = train(args)
    from keraslm import tables

    data = args.eval_data or (_flag(args.preset, "valid_data") if args.preset else "")
    if not data and args.preset:
        data = _flag(args.preset, "train_data")
    table = tables.read_table(data, "--eval_data", args.text_column, args.label_column)
    metrics = evaluate(args, model_dir) if args.eval_data else None
    latency, best_latency, throughput, classifier = speed(args, model_dir, table.texts)
    rows = [f"| export | {classifier.path} |"]
    if records:
        last = records[-1]
        rate = [record["examples_per_second"] for record in records]
        curve = ", ".join(f"{record['step']}: {record['val_accuracy']:.4f}" for record in records)
        rows += [
            f"| keraslm-train wall time (start to exit, incl. tokenizer, validation, export) | {wall:.1f} s |",
            f"| steps | {last['step']} |",
            f"| training examples/s per segment (min / median / max) | {min(rate):,.0f} / {statistics.median(rate):,.0f} / {max(rate):,.0f} |",
            f"| validation accuracy per evaluation (as training measured it) | {curve} |",
            f"| best validation accuracy | {max(r['val_accuracy'] for r in records):.4f} |",
        ]
    if metrics:
        rows += [
            f"| accuracy of the export on {args.eval_data} (keraslm-evaluate) | **{metrics['accuracy']:.4f}** ({metrics['num_examples']:,} examples) |",
            f"| macro F1 | {metrics['macro_f1']:.4f} |",
        ]
    rows += [
        f"| batch 1 latency, `classify([text])` (median / best of {args.repeats}) | {latency:.2f} / {best_latency:.2f} ms |",
        f"| batch 64 throughput, `classify(64 texts)` ({args.batches} batches) | {throughput:,.0f} texts/s |",
    ]
    name = os.path.basename(args.preset) if args.preset else model_dir
    body = (f"{args.note}\n\n" if args.note else "") + "| what | value |\n| --- | --- |\n" + "\n".join(rows)
    common.report(f"Classifier: {name}", body, args.no_write)


if __name__ == "__main__":
    main()
