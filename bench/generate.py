"""Generation speed of exported SavedModels: tokens/s, cached vs uncached, batch 1 and 64.

  python bench/generate.py                       # untrained models of the preset shapes
  python bench/generate.py --work_dirs=runs/shakespeare,runs/shakespeare_lstm

Each model is exported twice (key/value cache or LSTM state: ExportConfig.kv_cache=True; full
recompute every step: False), loaded back with tf.saved_model.load as a serving client would, and
its `generate` signature timed on `--max_new_tokens` tokens per row, sampling at temperature 1.
Variants run interleaved, repeat after repeat, so machine noise hits them alike; the table gives
the best and the median repeat and the cached/uncached ratio of medians. Speed does not depend on
the weights, so untrained models of the preset shapes measure the same thing as trained ones.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

# The preset shapes: configs/tinyshakespeare_char.flags and configs/tinyshakespeare_lstm.flags.
PRESETS = {
    "transformer": dict(model="transformer", sequence_length=64, hidden_dim=128, num_layers=4, num_heads=4),
    "lstm": dict(model="lstm", sequence_length=64, hidden_dim=256, num_layers=2),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dirs", default="", help="Comma-separated trained work directories; empty: untrained presets.")
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--max_new_tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats of each cached variant.")
    parser.add_argument("--uncached_repeats", type=int, default=3, help="Timed repeats of each uncached variant (slow).")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def models(args):
    """(name, run_config, keras model, tokenizer) for each model to measure."""
    import keras

    from keraslm import data
    from keraslm.config import ModelConfig, RunConfig, TokenizerConfig
    from keraslm.tasks import build_model
    from keraslm.tokenizers import train_tokenizer
    from keraslm.training import load_trained_model

    if args.work_dirs:
        for work_dir in args.work_dirs.split(","):
            config, model, tokenizer, _ = load_trained_model(work_dir, use_cudnn=False)
            yield f"{config.model.model} ({work_dir})", config, model, tokenizer
        return
    text = data.read_text_file(os.path.join(os.path.dirname(common.BENCHMARKS), "data", "tinyshakespeare", "input.txt"))
    tokenizer = train_tokenizer(TokenizerConfig("char"), text, os.path.join(tempfile.mkdtemp(), "tokenizer"))
    for name, shape in PRESETS.items():
        keras.utils.set_random_seed(0)
        config = RunConfig(model=ModelConfig(vocabulary_size=tokenizer.vocabulary_size, **shape))
        yield f"{name} (untrained)", config, build_model(config, use_cudnn=False), tokenizer


def shape_of(config):
    model = config.model
    if model.model == "transformer":
        return f"{model.num_layers}x{model.hidden_dim}, {model.num_heads} heads, context {model.sequence_length}"
    return f"{model.num_layers}x{model.hidden_dim} LSTM"


def generate_inputs(batch_size, max_new_tokens):
    import tensorflow as tf

    return dict(
        prompt=tf.constant(["ROMEO:"] * batch_size),
        max_new_tokens=tf.fill([batch_size], max_new_tokens),
        temperature=tf.fill([batch_size], 1.0),
        top_k=tf.zeros([batch_size], tf.int32),
        top_p=tf.ones([batch_size]),
        repetition_penalty=tf.ones([batch_size]),
        seed=tf.range(batch_size, dtype=tf.int64),
        stop=tf.fill([batch_size], ""),
    )


def main():
    args = parse_args()
    import tensorflow as tf

    from keraslm.config import ExportConfig
    from keraslm.export import export_model

    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    peak_before = common.matmul_gflops()
    rows = []
    for name, config, model, tokenizer in models(args):
        signatures = {}
        for cached in (True, False):
            path = export_model(
                model, tokenizer, config, tempfile.mkdtemp(), ExportConfig(kv_cache=cached), verbose=False
            )
            signatures[cached] = tf.saved_model.load(path).signatures["generate"]
        for batch_size in batch_sizes:
            inputs = generate_inputs(batch_size, args.max_new_tokens)
            times = {True: [], False: []}
            for signature in signatures.values():  # warm-up: first-call set-up is not generation
                signature(**{**inputs, "max_new_tokens": tf.fill([batch_size], 2)})
            for repeat in range(max(args.repeats, args.uncached_repeats)):
                for cached, signature in signatures.items():
                    if repeat >= (args.repeats if cached else args.uncached_repeats):
                        continue
                    started = time.perf_counter()
                    outputs = signature(**inputs)
                    generated = int(tf.reduce_sum(outputs["num_tokens"]))
                    times[cached].append(time.perf_counter() - started)
                    assert generated == batch_size * args.max_new_tokens, generated
            tokens = batch_size * args.max_new_tokens
            best = {cached: tokens / min(values) for cached, values in times.items()}
            median = {cached: tokens / sorted(values)[len(values) // 2] for cached, values in times.items()}
            rows.append(
                f"| {name} | {shape_of(config)} | {batch_size} | {best[True]:,.0f} | {median[True]:,.0f} "
                f"| {best[False]:,.0f} | {median[False]:,.0f} | {median[True] / median[False]:.1f}x |"
            )
            print(rows[-1], flush=True)
    peak_after = common.matmul_gflops()
    table = (
        f"{args.max_new_tokens} new tokens per row after the prompt \"ROMEO:\", temperature 1; "
        f"{args.repeats} cached and {args.uncached_repeats} uncached repeats, interleaved. "
        f"fp32 matmul (2048²) measured before / after: {peak_before:.0f} / {peak_after:.0f} GFLOP/s.\n\n"
        "| model | shape | batch | cached tokens/s (best) | cached (median) | uncached (best) | uncached (median) "
        "| cached / uncached (medians) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    )
    common.report("Generation: exported SavedModel, `generate` signature", table, args.no_write)


if __name__ == "__main__":
    main()
