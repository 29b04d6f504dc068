"""Training step time alone: the knob-by-knob tool behind BENCHMARKS.md's "what helped" table.

  python bench/step_time.py --preset=configs/tinyshakespeare_char.flags [--steps=200] [--repeats=3]
      [--keraslm_flag=value ...]
  XLA_FLAGS=--xla_cpu_... python bench/step_time.py --preset=...   # an XLA option

Builds and compiles the preset's model exactly as training does (training.build_compiled_model),
then times `fit` on random token windows of the preset's shape: no tokenizer, no evaluation, no
checkpoints, so a setting's effect on the step shows without a 2000-step run. One untimed fit
compiles; then --repeats fits of --steps steps each are timed. Machines here are shared and
noisy: compare settings run one after another, alternating, and trust the best and the median,
not one figure.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

# No tokenizer is trained here, so the vocabulary is taken from --vocabulary_size or else is the
# char preset's: tinyshakespeare's 65 characters + [PAD] + [UNK]. Only the logits' width depends on it.
DEFAULT_VOCABULARY_SIZE = 67


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Any other keraslm-train flag (--steps_per_execution=10, --jit_compile=false, --mixed_precision=...) "
        "is applied on top of the preset.",
    )
    parser.add_argument("--preset", required=True, help="A --flagfile preset from configs/.")
    parser.add_argument("--steps", type=int, default=200, help="Steps per timed fit.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed fits.")
    parser.add_argument("--intra_op_threads", type=int, default=0, help="Threads inside one op (tf.config.threading); 0 = TensorFlow's default.")
    parser.add_argument("--inter_op_threads", type=int, default=0, help="Ops run at once (tf.config.threading); 0 = TensorFlow's default.")
    parser.add_argument("--no_write", action="store_true", help="Print the row; do not append it to BENCHMARKS.md.")
    args, extra_flags = parser.parse_known_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")

    config = common.preset_config(args.preset, extra_flags)
    config.model.vocabulary_size = config.tokenizer.vocabulary_size or DEFAULT_VOCABULARY_SIZE

    import numpy as np
    import tensorflow as tf

    from keraslm import training

    # Before any op runs: TensorFlow fixes its thread pools at the first one.
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    model = training.build_compiled_model(config)
    batch_size, length = config.train.batch_size, config.model.sequence_length
    windows = np.random.default_rng(0).integers(0, config.model.vocabulary_size, size=(batch_size * args.steps, length + 1))

    def dataset(steps):
        options = tf.data.Options()
        options.autotune.enabled = False  # as training's pipelines (BENCHMARKS.md: autotuning made steps bimodal)
        pairs = (windows[: batch_size * steps, :-1].astype("int32"), windows[: batch_size * steps, 1:].astype("int32"))
        return tf.data.Dataset.from_tensor_slices(pairs).batch(batch_size).prefetch(2).with_options(options)

    model.fit(dataset(min(args.steps, 50)), epochs=1, verbose=0)  # compiles
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.fit(dataset(args.steps), epochs=1, verbose=0)
        timings.append(1000 * (time.perf_counter() - started) / args.steps)

    body = (
        f"Preset `{args.preset}` ({config.model.model} {config.model.num_layers}x{config.model.hidden_dim}, "
        f"context {length}, batch {batch_size}), jit_compile={training.resolve_jit_compile(config)}, "
        f"steps_per_execution={config.train.steps_per_execution}, mixed_precision={config.train.mixed_precision}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '') or '(none)'}, threads intra/inter {args.intra_op_threads or 'default'}/"
        f"{args.inter_op_threads or 'default'}; {args.repeats} fits of {args.steps} steps.\n\n"
        "| ms/step, each fit | best | median |\n| --- | --- | --- |\n"
        f"| {', '.join(f'{t:.1f}' for t in timings)} | {min(timings):.1f} | {statistics.median(timings):.1f} |"
    )
    common.report("Step time", body, args.no_write)


if __name__ == "__main__":
    main()
