"""Distillation: how much of a teacher classifier's accuracy a student of a fraction of its size keeps.

  python bench/distill.py --teacher=saved_models/sst2 --preset=configs/sst2_distilled.flags \
      --eval_data=data/sst2/dev.tsv

Trains the student preset twice with `keraslm-train` as subprocesses (what a user runs), in fresh
work directories under --root: once with --teacher (the distilled student) and once without (the
baseline: the same model from the true labels alone), then measures the teacher's and both
students' exports with keraslm-evaluate on --eval_data. Parameters are counted from each export's
float variables, so the teacher and the students are counted alike. The machine is shared:
compare figures from one run only; training wall times include the teacher's scoring.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The teacher: a classifier export (a version directory, or its base directory for the newest).")
    parser.add_argument("--preset", default="configs/sst2_distilled.flags", help="The student's --flagfile preset.")
    parser.add_argument("--eval_data", default="data/sst2/dev.tsv", help="Labelled file all three are evaluated on.")
    parser.add_argument("--root", default="", help="Where the students' work and export directories go (default: a new temporary one).")
    parser.add_argument("--extra_flag", action="append", default=[], help="More keraslm-train flags for both students (repeatable).")
    parser.add_argument(
        "--distill_flag", action="append", default=[],
        help="keraslm-train flags for the distilled student alone, such as --distill_alpha=0.8 (repeatable).",
    )
    parser.add_argument(
        "--baseline_export", default="",
        help="Measure this export as the baseline student instead of training one (the preset trained without --teacher).",
    )
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def train_student(args, name, teacher_flags):
    """keraslm-train on the preset into <root>/<name>; returns (export dir, metrics records, wall seconds)."""
    work_dir, export_dir = os.path.join(args.root, name), os.path.join(args.root, f"{name}_export")
    command = [
        sys.executable, "-m", "keraslm.cli.train", f"--flagfile={args.preset}", *teacher_flags, *args.extra_flag,
        f"--work_dir={work_dir}", f"--export_dir={export_dir}",
    ]
    print("+ " + " ".join(command), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, text=True)
    wall = time.perf_counter() - started
    if completed.returncode:
        sys.exit(f"keraslm-train ({name}) failed ({completed.returncode})")
    with open(os.path.join(work_dir, "metrics.json"), encoding="utf-8") as file:
        records = json.load(file)["evaluations"]
    return export_dir, records, wall


def evaluate(args, model_dir):
    command = [sys.executable, "-m", "keraslm.cli.evaluate", f"--model_dir={model_dir}", f"--data={args.eval_data}"]
    completed = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    if completed.returncode:
        sys.exit(completed.stderr)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def export_parameters(model_dir):
    """(version directory, the number of float weights in its variables): the model's parameters
    (dropout's integer random states are not parameters)."""
    import tensorflow as tf

    from keraslm.inference import resolve_model_dir

    path = resolve_model_dir(model_dir)
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    count = sum(
        int(tf.TensorShape(shape).num_elements())
        for name, shape in reader.get_variable_to_shape_map().items()
        if dtypes[name].is_floating
    )
    return path, count


def main():
    args = parse_args()
    from keraslm.config import TrainConfig

    args.root = args.root or tempfile.mkdtemp(prefix="distill_bench_")
    teacher = args.teacher
    if os.path.isfile(os.path.join(teacher, "config.json")):
        sys.exit("--teacher: give the teacher's export here (its parameters and accuracy are measured on the export)")
    distilled = train_student(args, "distilled", [f"--teacher={teacher}", *args.distill_flag])
    if args.baseline_export:
        baseline = (args.baseline_export, [], None)
    else:
        # The same preset without a teacher; the --distill_* settings back to their defaults,
        # which a run without --teacher requires.
        baseline = train_student(
            args, "baseline",
            ["--teacher=", f"--distill_temperature={TrainConfig.distill_temperature}", f"--distill_alpha={TrainConfig.distill_alpha}"],
        )
    teacher_path, teacher_parameters = export_parameters(teacher)
    teacher_accuracy = evaluate(args, teacher_path)["accuracy"]
    rows = [f"| teacher | {teacher_path} | {teacher_parameters:,} | 1.000 | **{teacher_accuracy:.4f}** | 1.000 | |"]
    for name, (export_dir, records, wall) in (("distilled student", distilled), ("baseline student (no teacher)", baseline)):
        path, parameters = export_parameters(export_dir)
        accuracy = evaluate(args, path)["accuracy"]
        curve = ", ".join(f"{record['step']}: {record['val_accuracy']:.4f}" for record in records)
        rows.append(
            f"| {name} | {path} | {parameters:,} | {parameters / teacher_parameters:.3f} | **{accuracy:.4f}** | "
            f"{accuracy / teacher_accuracy:.3f} | {f'{wall:.0f} s; {curve}' if records else 'measured as given'} |"
        )
    settings = common.preset_config(args.preset, [f"--teacher={teacher}", *args.extra_flag, *args.distill_flag]).train
    body = (
        (f"{args.note}\n\n" if args.note else "")
        + f"Student preset {args.preset} (--distill_temperature={settings.distill_temperature}, "
        f"--distill_alpha={settings.distill_alpha}); accuracy of each export on {args.eval_data} (keraslm-evaluate).\n\n"
        "| model | export | parameters | of the teacher's | accuracy | of the teacher's | keraslm-train wall time; validation accuracy per evaluation |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    )
    common.report(f"Distillation: {os.path.basename(args.preset)}", body, args.no_write)


if __name__ == "__main__":
    main()
