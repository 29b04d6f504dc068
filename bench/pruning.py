"""What magnitude pruning (--prune_sparsity) buys a classifier: its export's gzip size, against its accuracy.

  python bench/pruning.py --preset=configs/sst2_lstm.flags --baseline_work_dir=runs/sst2 --eval_data=data/sst2/dev.tsv

For each --sparsities value the preset is trained with --prune_sparsity (keraslm-train as a
subprocess, in <root>/sparsity_<value>; a finished run trains nothing, so its wall time is read
from its metrics.json). Every run, and the unpruned --baseline_work_dir of the same preset, is
exported as float32 and int8 SavedModels (bench/compression.py's export, what keraslm-export
writes) and measured: the share of zeros in the pruned weights and in all weights, the size of
variables/ and of the whole version directory, its gzip -9 size (tar of the directory: what a
download or a model store's compressed blob costs), accuracy on --eval_data and batch-1 latency
through keraslm.load(...).classify. The machine is shared: compare figures from one run only.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)
import compression  # noqa: E402  (bench/compression.py: export, sizes, measure_classifier)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="A --task=classify --flagfile preset.")
    parser.add_argument("--sparsities", default="0.5,0.8", help="Comma-separated --prune_sparsity values to train.")
    parser.add_argument("--baseline_work_dir", default="", help="A finished unpruned run of the preset, measured alongside.")
    parser.add_argument("--root", default="/tmp/bench_pruning", help="Where the pruned runs and all exports go.")
    parser.add_argument("--eval_data", default="", help="Labelled file for accuracy; empty: each run's validation split.")
    parser.add_argument("--variants", default="float32,int8", help="bench/compression.py variants to export.")
    parser.add_argument("--repeats", type=int, default=20, help="Batch-1 calls for the latency.")
    parser.add_argument("--batches", type=int, default=5, help="Batches of 64 for the throughput.")
    parser.add_argument("--extra_flag", action="append", default=[], help="More keraslm-train flags (repeatable).")
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def train(args, sparsity):
    """keraslm-train on the preset with --prune_sparsity; returns the work directory."""
    work_dir = os.path.join(args.root, f"sparsity_{sparsity}")
    command = [
        sys.executable, "-m", "keraslm.cli.train", f"--flagfile={args.preset}", f"--prune_sparsity={sparsity}",
        f"--work_dir={work_dir}", *args.extra_flag,
    ]
    if subprocess.run(command, cwd=REPO).returncode:
        sys.exit(f"keraslm-train failed: {' '.join(command)}")
    return work_dir


def zeros(work_dir):
    """(share of zeros in the pruned weights, in all weights, parameters) of the run's newest checkpoint."""
    import numpy as np

    from keraslm import pruning, training

    model = training.load_trained_model(work_dir).model
    every = sum(int(np.count_nonzero(weight.numpy() == 0)) for weight in model.weights)
    return pruning.zero_share(pruning.prunable_weights(model)), every / model.count_params(), model.count_params()


def directory_size(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure(args, name, work_dir, data):
    """One row per variant of the run in work_dir."""
    with open(os.path.join(work_dir, "metrics.json"), encoding="utf-8") as file:
        last = json.load(file)["evaluations"][-1]
    pruned_share, overall_share, parameters = zeros(work_dir)
    rows = []
    for variant in args.variants.split(","):
        try:
            path, _ = compression.export(work_dir, os.path.join(args.root, "exports", name.replace(" ", "_")), variant)
        except Exception as error:  # noqa: BLE001  (a variant that cannot be exported yet is reported, not fatal)
            rows.append({"run": name, "variant": variant, "error": str(error).splitlines()[0][:160]})
            continue
        total, gzipped = compression.sizes(path)
        measured = compression.measure_classifier(args, path, False, *data)
        rows.append({
            "run": name, "variant": variant, "path": path, "pruned_zeros": pruned_share, "all_zeros": overall_share,
            "parameters": parameters, "variables": directory_size(os.path.join(path, "variables")), "total": total,
            "gzip": gzipped, "accuracy": measured["quality"], "latency_ms": measured["latency_ms"],
            "train_minutes": last["elapsed_seconds"] / 60, "ms_per_step": last["ms_per_step"],
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    args = parse_args()
    from keraslm.config import load_run_config

    runs = [("unpruned", args.baseline_work_dir)] if args.baseline_work_dir else []
    runs += [(f"sparsity {value}", train(args, value)) for value in args.sparsities.split(",")]
    first = load_run_config(os.path.join(runs[0][1], "config.json"))
    data = compression.evaluation_data(args, first)
    rows = [row for name, work_dir in runs for row in measure(args, name, work_dir, data)]

    base = {row["variant"]: row for row in rows if row["run"] == "unpruned" and "error" not in row}
    lines = [
        "| run | export | zeros: pruned weights / all weights | variables/ | version dir | gzip -9 (vs unpruned) | "
        "accuracy | batch-1 latency |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['run']} | {row['variant']} | not measured: {row['error']} | | | | | |")
            continue
        reference = base.get(row["variant"])
        relative = f" ({row['gzip'] / reference['gzip']:.0%})" if reference else ""
        lines.append(
            f"| {row['run']} | {row['variant']} | {row['pruned_zeros']:.3f} / {row['all_zeros']:.3f} | "
            f"{row['variables']:,} B | {row['total']:,} B | {row['gzip']:,} B{relative} | {row['accuracy']:.4f} | "
            f"{row['latency_ms']:.2f} ms |"
        )
    trained = ", ".join(
        f"{row['run']}: {row['train_minutes']:.1f} min ({row['ms_per_step']:.0f} ms/step in the last segment)"
        for row in rows if row["variant"] == "float32" and "error" not in row
    )
    what = f"{len(data[0]):,} examples of {args.eval_data or 'the run’s validation split'}"
    body = (
        (f"{args.note}\n\n" if args.note else "")
        + f"Preset `{args.preset}`, {rows[0].get('parameters', 0):,} parameters; accuracy on {what}. "
        + f"Training wall time (from metrics.json): {trained}.\n\n"
        + "\n".join(lines)
    )
    common.report(f"Pruning: {os.path.basename(args.preset)}", body, args.no_write)


if __name__ == "__main__":
    main()
