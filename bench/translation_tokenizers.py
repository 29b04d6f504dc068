"""One joint vocabulary or one per language, for a translation model: [UNK] rate and length on held-out pairs.

  python bench/translation_tokenizers.py --train_data=data/eng-fra/fra.txt --vocabulary_size=4000

Tokenizers are trained on the training side of keraslm's split (--valid_fraction of the distinct
sources held out, --seed) exactly as keraslm-train trains them: a joint one of --vocabulary_size
pieces on both languages, and separate ones per language of half that size (the same embedding
rows in all) and of the full size. For each, on the held-out pairs: the share of [UNK] tokens and
the mean tokens per sentence on each side, and for the joint one, how many of its pieces occur in
both languages' training text.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train_data", default="data/eng-fra/fra.txt")
    parser.add_argument("--tokenizer", default="sentencepiece")
    parser.add_argument("--vocabulary_size", type=int, default=4000)
    parser.add_argument("--valid_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def main():
    args = parse_args()
    import numpy as np
    import tensorflow as tf

    from keraslm import pairs as pairs_lib
    from keraslm.config import TokenizerConfig
    from keraslm.tokenizers import UNK_ID, train_tokenizer

    train, valid = pairs_lib.split_by_source(
        pairs_lib.read_pairs(args.train_data, "--train_data"), args.valid_fraction, args.seed
    )
    root = tempfile.mkdtemp(prefix="bench_translation_tokenizers-")

    def tokenizer(texts, size, name):
        config = TokenizerConfig(tokenizer=args.tokenizer, vocabulary_size=size)
        return train_tokenizer(config, "\n".join(texts), os.path.join(root, name))

    def stats(tok, texts, keep_whitespace):
        ids = tok.tokenize(tf.constant(texts), keep_whitespace=keep_whitespace)
        values = ids.flat_values.numpy()
        return float((values == UNK_ID).mean()), float(ids.row_lengths().numpy().mean())

    half = args.vocabulary_size // 2
    joint = tokenizer(train.sources + train.targets, args.vocabulary_size, "joint")
    setups = {
        f"joint {args.vocabulary_size:,}": (joint, joint),
        f"separate {half:,} + {half:,}": (tokenizer(train.sources, half, "en_half"), tokenizer(train.targets, half, "fr_half")),
        f"separate {args.vocabulary_size:,} + {args.vocabulary_size:,}": (
            tokenizer(train.sources, args.vocabulary_size, "en"),
            tokenizer(train.targets, args.vocabulary_size, "fr"),
        ),
    }
    lines = [
        f"{args.tokenizer}; {len(train.sources):,} training and {len(valid.sources):,} held-out pairs of "
        f"{args.train_data}. Tokens per sentence: sources without whitespace tokens, targets with them (as "
        "--task=seq2seq tokenizes).",
        "",
        "| vocabularies | embedding rows (source + target) | held-out [UNK] source | [UNK] target | tokens/source | tokens/target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (source_tok, target_tok) in setups.items():
        source_unk, source_length = stats(source_tok, valid.sources, False)
        target_unk, target_length = stats(target_tok, valid.targets, True)
        rows = source_tok.vocabulary_size + (0 if target_tok is source_tok else target_tok.vocabulary_size)
        lines.append(
            f"| {name} | {rows:,} | {source_unk:.4%} | {target_unk:.4%} | {source_length:.2f} | {target_length:.2f} |"
        )
    used = [
        set(np.unique(joint.tokenize(tf.constant(texts)).flat_values.numpy()).tolist())
        for texts in (train.sources, train.targets)
    ]
    lines += [
        "",
        f"Joint vocabulary: {len(used[0] & used[1]):,} of its {joint.vocabulary_size:,} pieces occur in both languages' "
        f"training text, {len(used[0] - used[1]):,} only in the sources, {len(used[1] - used[0]):,} only in the targets.",
    ]
    body = "\n".join(lines)
    if args.no_write:
        print(body)
    else:
        common.append_section("Translation: one joint vocabulary or one per language", body)


if __name__ == "__main__":
    main()
