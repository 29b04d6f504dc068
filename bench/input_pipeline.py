"""Input pipeline throughput: tokens/s tf.data delivers alone vs what training consumes.

  python bench/input_pipeline.py --preset=configs/tinyshakespeare_char.flags [--steps=2000]

Times (1) tokenizing the training text (the map + AUTOTUNE stage), (2) iterating the windowed,
shuffled, batched training dataset with nothing consuming it, and (3) a short training run of the
same preset, whose tokens/s is what the pipeline has to keep up with.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--steps", type=int, default=2000, help="Batches to draw from the dataset.")
    parser.add_argument("--train_steps", type=int, default=300, help="Steps of the consumption run.")
    parser.add_argument("--no_write", action="store_true")
    args, extra_flags = parser.parse_known_args()

    # The consumption run: train_steps steps with a single one-batch evaluation at the end.
    overrides = [f"--train_steps={args.train_steps}", f"--eval_interval={args.train_steps}", "--eval_steps=1"]
    config = common.preset_config(args.preset, [*extra_flags, *overrides])

    from keraslm import data, training
    from keraslm.tokenizers import train_tokenizer

    train_text, _ = data.split_for_validation(data.read_text_file(config.train.train_data))
    scratch = tempfile.mkdtemp(prefix="keraslm-bench-")
    try:
        tokenizer = train_tokenizer(config.tokenizer, train_text, os.path.join(scratch, "tokenizer"))
        started = time.perf_counter()
        ids = data.tokenize_text(tokenizer, train_text)
        tokenize_rate = len(ids) / (time.perf_counter() - started)

        model = config.model
        dataset = data.language_model_dataset(ids, model.sequence_length, config.train.batch_size, config.train.seed, 0, args.steps)
        started = time.perf_counter()
        batches = sum(1 for _ in dataset)
        pipeline_rate = batches * config.train.batch_size * model.sequence_length / (time.perf_counter() - started)

        result = training.train(config, os.path.join(scratch, "run"), verbose=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # The whole run includes compilation, so this overstates the time per step a little.
    consumption_rate = args.train_steps * config.train.batch_size * model.sequence_length / result.train_seconds
    body = (
        f"Preset `{args.preset}` (batch {config.train.batch_size}, context {model.sequence_length}).\n\n"
        "| stage | tokens/s |\n| --- | --- |\n"
        f"| tokenize the training text (tf.data map, AUTOTUNE) | {tokenize_rate:,.0f} |\n"
        f"| training batches alone ({batches} batches: windows, shuffle, batch, gather) | {pipeline_rate:,.0f} |\n"
        f"| training consumes ({args.train_steps} steps incl. compilation) | {consumption_rate:,.0f} |\n\n"
        f"The pipeline alone delivers {pipeline_rate / consumption_rate:.0f}x what training consumes."
    )
    common.report("Input pipeline", body, args.no_write)


if __name__ == "__main__":
    main()
