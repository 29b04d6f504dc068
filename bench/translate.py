"""A trained translation run: held-out BLEU / chrF (greedy and beam search) and decoding speed of its SavedModel.

  python bench/translate.py --work_dir=runs/eng_fra --title="Transformer, eng_fra_transformer.flags"

The run is exported twice (key/value cache: ExportConfig.kv_cache=True; the target prefix
recomputed at every step: False) and loaded back as keraslm.load does (a graph Session, as TF
Serving runs it). Quality: keraslm.translation_evaluation on the pairs training held out (the
run's own --seed and --valid_fraction), greedy and with --num_beams beams. Speed: the `translate`
signature on held-out sources, batches of --batch_size and single sentences, greedy and beam
search, cached and recomputed; variants interleaved, repeat after repeat, so machine noise hits
them alike; medians reported.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True, help="A trained --task=seq2seq work directory.")
    parser.add_argument("--title", default="", help="What the run is, for the BENCHMARKS.md heading.")
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats of each batch variant.")
    parser.add_argument("--latency_sentences", type=int, default=30, help="Single sentences timed per variant.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def held_out(config):
    from keraslm import pairs as pairs_lib

    train = config.train
    columns = dict(source_column=train.source_column, target_column=train.target_column)
    if train.valid_data:
        return pairs_lib.read_pairs(train.valid_data, "--valid_data", **columns)
    everything = pairs_lib.read_pairs(train.train_data, "--train_data", **columns)
    return pairs_lib.split_by_source(everything, train.valid_fraction, train.seed)[1]


def main():
    args = parse_args()
    import keraslm
    from keraslm import pairs as pairs_lib
    from keraslm.config import ExportConfig, load_run_config
    from keraslm.export import export_from_work_dir
    from keraslm.translation_evaluation import evaluate_translator

    config = load_run_config(os.path.join(args.work_dir, "config.json"))
    pairs = held_out(config)
    sources = pairs_lib.references(pairs)[0]
    root = tempfile.mkdtemp(prefix="bench_translate-")
    translators = {}
    for kv_cache in (True, False):
        version = export_from_work_dir(args.work_dir, os.path.join(root, str(kv_cache)), ExportConfig(kv_cache=kv_cache),
                                       verbose=False)
        translators[kv_cache] = keraslm.load(version)

    # === Quality ===
    quality = []
    for beams in (1, args.num_beams):
        started = time.perf_counter()
        metrics = evaluate_translator(translators[True], pairs, batch_size=args.batch_size, num_beams=beams,
                                      length_penalty=args.length_penalty)
        quality.append((beams, metrics, time.perf_counter() - started))

    # === Speed ===
    batch = sources[: args.batch_size]
    singles = sources[args.batch_size : args.batch_size + args.latency_sentences]
    variants = [(kv_cache, beams) for kv_cache in (True, False) for beams in (1, args.num_beams)]
    decoding = dict(length_penalty=args.length_penalty)
    for kv_cache, beams in variants:  # warm-up: each variant's graph prepared once
        translators[kv_cache].translate_with_details(batch[:2], num_beams=beams, **decoding)
    batch_seconds = {variant: [] for variant in variants}
    batch_tokens = {}
    for _ in range(args.repeats):
        for kv_cache, beams in variants:
            started = time.perf_counter()
            results = translators[kv_cache].translate_with_details(batch, num_beams=beams, **decoding)
            batch_seconds[(kv_cache, beams)].append(time.perf_counter() - started)
            batch_tokens[(kv_cache, beams)] = sum(result.num_tokens for result in results)
    latency = {variant: [] for variant in variants}
    for source in singles:
        for kv_cache, beams in variants:
            started = time.perf_counter()
            translators[kv_cache].translate_with_details([source], num_beams=beams, **decoding)
            latency[(kv_cache, beams)].append(time.perf_counter() - started)

    lines = [
        f"{len(pairs.sources):,} held-out pairs ({len(sources):,} distinct sources); model: {config.model.model}, "
        f"{config.model.num_layers} layers, hidden {config.model.hidden_dim}, {config.tokenizer.tokenizer} "
        f"{config.model.vocabulary_size - 2:,}; length_penalty {args.length_penalty}.",
        "",
        "| decoding | BLEU | chrF | exact match | seconds for the held-out set |",
        "| --- | --- | --- | --- | --- |",
    ]
    for beams, metrics, seconds in quality:
        name = "greedy" if beams == 1 else f"beam {beams}"
        lines.append(f"| {name} | {metrics['bleu']:.2f} | {metrics['chrf']:.2f} | {metrics['exact_match']:.4f} | {seconds:.1f} |")
    lines += [
        "",
        f"BLEU signature: `{quality[0][1]['bleu_signature']}`.",
        "",
        f"| decoder | decoding | batch {args.batch_size}: sentences/s | tokens/s | batch 1: median ms | p90 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kv_cache, beams in variants:
        seconds = statistics.median(batch_seconds[(kv_cache, beams)])
        singles_ms = sorted(1000 * value for value in latency[(kv_cache, beams)])
        p90 = singles_ms[min(len(singles_ms) - 1, int(0.9 * len(singles_ms)))]
        lines.append(
            f"| {'key/value cache' if kv_cache else 'recompute'} | {'greedy' if beams == 1 else f'beam {beams}'} | "
            f"{len(batch) / seconds:.1f} | {batch_tokens[(kv_cache, beams)] / seconds:,.0f} | "
            f"{statistics.median(singles_ms):.1f} | {p90:.1f} |"
        )
    for beams in (1, args.num_beams):
        gain = statistics.median(batch_seconds[(False, beams)]) / statistics.median(batch_seconds[(True, beams)])
        lines.append(f"\nKey/value cache over recomputation, batch {args.batch_size}, "
                     f"{'greedy' if beams == 1 else f'beam {beams}'}: {gain:.2f}x.")
    body = "\n".join(lines)
    if args.no_write:
        print(body)
    else:
        common.append_section(f"Translation: {args.title or args.work_dir}", body)


if __name__ == "__main__":
    main()
