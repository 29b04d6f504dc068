"""How much context a trained language model uses: validation loss by context length.

  python bench/context_window.py --work_dir=runs/shakespeare

Validation windows of sequence_length + 1 tokens (as training validates); the loss of the token
at window position p has p tokens of context. The mean over p >= k is the loss a decoder that
always keeps at least k tokens of context would see, which is what the Transformer's sliding
key/value cache trades against speed (README, "Context window").
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True, help="A trained keraslm-train work directory.")
    parser.add_argument("--max_windows", type=int, default=1500)
    parser.add_argument("--no_write", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from keraslm import data
    from keraslm.training import load_trained_model

    config, model, tokenizer, _ = load_trained_model(args.work_dir)
    train = config.train
    text = data.read_text_file(train.valid_data or train.train_data)
    valid = text if train.valid_data else data.split_for_validation(text)[1]
    size = config.model.sequence_length
    losses = []
    for inputs, targets in data.evaluation_dataset(data.tokenize_text(tokenizer, valid), size, 250, args.max_windows // 250):
        losses.append(tf.keras.losses.sparse_categorical_crossentropy(targets, model(inputs), from_logits=True).numpy())
    per_position = np.concatenate(losses).mean(axis=0)  # [p] = loss with p + 1 tokens of context
    keeps = sorted({1, size // 8, size // 4, size // 2, 3 * size // 4} - {0})
    rows = [f"| {keep} .. {size} | {per_position[keep - 1:].mean():.4f} |" for keep in keeps]
    body = (
        f"Model: {args.work_dir} ({config.model.model}, context {size}); "
        f"{sum(len(batch) for batch in losses)} validation windows.\n\n"
        "| context seen (tokens) | mean validation loss |\n| --- | --- |\n" + "\n".join(rows)
    )
    common.report("Context a model uses: validation loss by minimum context", body, args.no_write)


if __name__ == "__main__":
    main()
