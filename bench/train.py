"""Training speed of a preset: ms/step, tokens/s, FLOPs/token, MFU, time to a target loss.

  python bench/train.py --preset=configs/tinyshakespeare_char.flags [--target_loss=1.89] [--flag=value ...]

Runs keraslm's own training (the library behind keraslm-train) on the preset in a fresh work
directory, with any extra keraslm-train flags applied on top. Reports:
- ms/step: median over the evaluation segments after the first (which includes compilation),
  and over the whole run;
- model FLOPs per token, forward + backward: Transformer 6 * N + 12 * L * H * T (nanoGPT's count:
  N = weights used in matmuls, L layers, H width, T context); LSTM 6 * N with N = the gate and
  output matmul weights;
- MFU = achieved FLOP/s / this machine's fp32 matmul peak, measured (bench/common.matmul_gflops)
  before and after training in the same run; the higher of the two is the denominator. MFU
  against numpy's matmul (the denominator ../shared/MEASUREMENTS.md used for nanoGPT) is given
  beside it: TensorFlow's oneDNN kernels reach about twice numpy's rate here;
- time to the first evaluation at or under --target_loss, from the start of training.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


def flops_per_token(config):
    model = config.model
    hidden, layers, vocabulary = model.hidden_dim, model.num_layers, model.vocabulary_size
    if model.model == "transformer":
        matmul_weights = layers * (4 * hidden * hidden + 2 * hidden * model.resolved_intermediate_dim()) + hidden * vocabulary
        return 6 * matmul_weights + 12 * layers * hidden * model.sequence_length
    # Each LSTM layer: 4 gates from the input and from the state; the first input is the embedding.
    matmul_weights = layers * 4 * hidden * (hidden + hidden) + hidden * vocabulary
    return 6 * matmul_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True, help="A --flagfile preset from configs/.")
    parser.add_argument("--target_loss", type=float, default=1.89, help="Report the time to reach this validation loss.")
    parser.add_argument("--no_write", action="store_true")
    args, extra_flags = parser.parse_known_args()

    config = common.preset_config(args.preset, extra_flags)

    from keraslm import training

    peak_before = common.matmul_gflops()
    work_dir = os.path.join(tempfile.mkdtemp(prefix="keraslm-bench-"), "run")
    try:
        result = training.train(config, work_dir)
        with open(os.path.join(work_dir, "metrics.json"), encoding="utf-8") as file:
            records = json.load(file)["evaluations"]
    finally:
        shutil.rmtree(os.path.dirname(work_dir), ignore_errors=True)
    peak = max(peak_before, common.matmul_gflops())
    numpy_peak = common.numpy_matmul_gflops()

    tokens_per_step = config.train.batch_size * config.model.sequence_length
    steady = [record["ms_per_step"] for record in records[1:]] or [records[0]["ms_per_step"]]
    steady_ms = statistics.median(steady)
    flops = flops_per_token(config)
    achieved = tokens_per_step / (steady_ms / 1000) * flops / 1e9
    reached = next((record for record in records if record["val_loss"] <= args.target_loss), None)
    time_to_target = f"{reached['elapsed_seconds']:.1f} s (step {reached['step']})" if reached else "not reached"
    model = config.model
    shape = f"{model.model} {model.num_layers}x{model.hidden_dim}, context {model.sequence_length}, batch {config.train.batch_size}"
    body = (
        f"Preset `{args.preset}` ({shape}), {result.step} steps, jit_compile={training.resolve_jit_compile(config)}, "
        f"mixed_precision={config.train.mixed_precision}.\n\n"
        "| final val loss | wall (training) | ms/step median after compile | ms/step whole run | tokens/s | "
        "model GFLOP/token | achieved GFLOP/s | matmul peak GFLOP/s (TF / numpy) | MFU (TF / numpy peak) | "
        f"time to val <= {args.target_loss} |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {result.val_loss:.4f} | {result.wall_seconds:.1f} s | {steady_ms:.1f} | {result.ms_per_step:.1f} | "
        f"{tokens_per_step / (steady_ms / 1000):,.0f} | {flops / 1e9:.4f} | {achieved:.0f} | "
        f"{peak:.0f} / {numpy_peak:.0f} | {achieved / peak:.0%} / {achieved / numpy_peak:.0%} | {time_to_target} |\n\n"
        "Segments (ms/step): " + ", ".join(f"{record['ms_per_step']:.1f}" for record in records)
    )
    common.report(f"Training: {os.path.basename(args.preset)}", body, args.no_write)


if __name__ == "__main__":
    main()
