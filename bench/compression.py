"""What compression buys: size, speed and quality of one trained run's exports, side by side.

  python bench/compression.py --work_dir=runs/sst2 --eval_data=data/sst2/dev.tsv
  python bench/compression.py --work_dir=runs/waimai10k         # its own seeded validation split
  python bench/compression.py --work_dir=runs/shakespeare        # a language model: perplexity

Each variant is exported from the run's newest checkpoint into --out_dir with keraslm's own
export (what `keraslm-export` writes): float32 and int8 SavedModels, and LiteRT models with
dynamic-range and full-integer quantization (--variants picks). For each: the files' size and
their gzip -9 size (tar of the version directory); batch-1 latency (median of --repeats calls of
one text) and batch-64 throughput; accuracy on --eval_data or the run's validation split
(classifiers), perplexity on the run's validation text (language models).

Classifiers are called through keraslm.load(...).classify (SavedModels) and
keraslm.tflite_runtime.load(...).classify (LiteRT; tokenizing in Python, so the interpreter's
own share is measured too). Language models generate --new_tokens greedy tokens: a SavedModel
with its `generate` signature (key/value cache in the graph), a LiteRT model in a Python loop
over its next-token logits (the whole window every token, as a device without the loop would).
Perplexity is keraslm-evaluate's (windows of the model's sequence_length), over the LiteRT
model's logits for LiteRT. "weights" is variables/ of a SavedModel and model.tflite of LiteRT;
"version directory" adds the graph, the vocabulary and config.json. The machine is shared:
compare figures from one run only.
"""

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

VARIANTS = {
    "float32": {"format": "saved_model", "quantize": "none"},
    "int8": {"format": "saved_model", "quantize": "int8"},
    "litert_float32": {"format": "tflite", "quantize": "none"},
    "litert_dynamic_range": {"format": "tflite", "quantize": "dynamic_range"},
    "litert_full_integer": {"format": "tflite", "quantize": "full_integer"},
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", required=True, help="A finished keraslm-train work directory.")
    parser.add_argument("--out_dir", default="", help="Where the exports go (default: <work_dir>-compression).")
    parser.add_argument(
        "--variants", default="float32,int8,litert_dynamic_range,litert_full_integer",
        help=f"Comma-separated, of: {', '.join(VARIANTS)}.",
    )
    parser.add_argument("--eval_data", default="", help="Classifiers: labelled file for accuracy; empty: the run's validation split.")
    parser.add_argument("--repeats", type=int, default=50, help="Batch-1 calls for the latency.")
    parser.add_argument("--batches", type=int, default=10, help="Batches of 64 for the throughput.")
    parser.add_argument("--new_tokens", type=int, default=32, help="Language models: tokens generated per prompt.")
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def sizes(path):
    """(bytes of the files, bytes of a gzip -9 tar of them) for a file or a directory."""
    total = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    if os.path.isfile(path):
        total = os.path.getsize(path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as archive:
        archive.add(path, arcname=os.path.basename(path))
    return total, buffer.tell()


def export(work_dir, out_dir, name):
    from keraslm.config import ExportConfig
    from keraslm.export import export_from_work_dir

    settings = VARIANTS[name]
    config = ExportConfig(format=settings["format"], quantize=settings["quantize"])
    started = time.perf_counter()
    path = export_from_work_dir(work_dir, os.path.join(out_dir, name), config, verbose=False)
    return path, time.perf_counter() - started


def timed(call, repeats):
    call()  # The first call prepares the graph.
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_classifier(args, path, litert, texts, labels):
    if litert:
        from keraslm import tflite_runtime

        model = tflite_runtime.load(path)
    else:
        import keraslm

        model = keraslm.load(path)
    single = iter(range(10**9))
    latency = timed(lambda: model.classify([texts[next(single) % len(texts)]]), args.repeats)
    model_alone = None
    if litert:
        # classify() tokenizes in Python with TensorFlow first; the interpreter's own share:
        ids = [model.tokenize([text]) for text in texts[: args.repeats]]
        rows = iter(range(10**9))
        model_alone = statistics.median(timed(lambda: model.run(ids[next(rows) % len(ids)]), args.repeats)) * 1000
    batches = [texts[(index * 64) % len(texts):][:64] for index in range(args.batches)]
    batches = [batch if len(batch) == 64 else (batch + texts)[:64] for batch in batches]
    model.classify(batches[0])
    started = time.perf_counter()
    for batch in batches:
        model.classify(batch)
    throughput = 64 * len(batches) / (time.perf_counter() - started)
    predicted = []
    for first in range(0, len(texts), 64):
        result = model.classify(texts[first:first + 64])
        # keraslm.load gives a Classification per text; the LiteRT runner gives arrays.
        predicted += [str(label) for label in result["label"]] if litert else [item.label for item in result]
    accuracy = sum(p == t for p, t in zip(predicted, labels)) / len(labels)
    return {
        "delegate": getattr(model, "delegate", None),
        "latency_ms": statistics.median(latency) * 1000,
        "model_alone_ms": model_alone,
        "throughput": throughput,
        "throughput_unit": "texts/s",
        "quality": accuracy,
        "predicted": predicted,
    }


def measure_language_model(args, path, litert, valid_text, sequence_length):
    from keraslm.evaluation import evaluate_text

    prompts = [line for line in valid_text.splitlines() if line.strip()][:64]
    if litert:
        from keraslm import tflite_runtime

        model = tflite_runtime.load(path)
        # The .tflite holds the forward pass, not the decoding loop: a device runs the loop, as
        # here (greedy, the whole window every token: no key/value cache).
        def generate(batch):
            ids = model.tokenize(batch)
            for _ in range(args.new_tokens):
                next_ids = np.argmax(model.next_token_logits(ids), axis=-1)
                ids = [np.append(row, token) for row, token in zip(ids, next_ids)]
            return ids

        latency = timed(lambda: generate(prompts[:1]), max(3, args.repeats // 10))
        batch_seconds = timed(lambda: generate(prompts), 1)
        quality = evaluate_text(_LiteRTScorer(model), valid_text, sequence_length, progress=False)["perplexity"]
        return {
            "latency_ms": statistics.median(latency) * 1000,
            "throughput": 64 * args.new_tokens / statistics.median(batch_seconds),
            "throughput_unit": "tokens/s",
            "quality": quality,
            "delegate": model.delegate,
        }
    import keraslm

    model = keraslm.load(path)
    generate = lambda batch: model.generate(batch, max_new_tokens=args.new_tokens, temperature=0.0)  # noqa: E731
    latency = timed(lambda: generate(prompts[:1]), args.repeats)
    batch_seconds = timed(lambda: generate(prompts), max(1, args.batches // 2))
    quality = evaluate_text(model, valid_text, sequence_length, progress=False)["perplexity"]
    return {
        "latency_ms": statistics.median(latency) * 1000,
        "throughput": 64 * args.new_tokens / statistics.median(batch_seconds),
        "throughput_unit": "tokens/s",
        "quality": quality,
        "continuations": [text for text in generate(prompts[:8])],
    }


class _LiteRTScorer:
    """What keraslm.evaluation.evaluate_text calls on a model, over a LiteRT language model."""

    def __init__(self, model):
        self.model = model
        self.tokenize = model.tokenize
        self.detokenize = model.detokenize

    def score_windows(self, windows, lengths):
        import tensorflow as tf

        from keraslm.scoring import score_windows

        logits = lambda inputs, training=False: tf.constant(self.model.logits(np.asarray(inputs)))  # noqa: E731
        log_likelihood, num_tokens = score_windows(logits, tf.constant(windows), tf.constant(lengths))
        return log_likelihood.numpy(), num_tokens.numpy()


def evaluation_data(args, run_config):
    """(texts, labels) for a classifier; the validation text for a language model."""
    from keraslm import tables
    from keraslm.tasks import get_task

    if run_config.task == "classify":
        if args.eval_data:
            table = tables.read_table(args.eval_data, "--eval_data", run_config.train.text_column, run_config.train.label_column)
        else:
            table = get_task("classify").read(run_config).valid  # The run's own seeded split.
        return table.texts, [str(label) for label in table.labels]
    # One plain text file, as the presets measured here use: the task holds out its last characters.
    if run_config.train.valid_data:
        with open(run_config.train.valid_data, encoding="utf-8") as file:
            return file.read()
    with open(run_config.train.train_data, encoding="utf-8") as file:
        text = file.read()
    return text[int(len(text) * (1.0 - run_config.train.valid_fraction)):]


def main():
    args = parse_args()
    from keraslm.config import load_run_config

    run_config = load_run_config(os.path.join(args.work_dir, "config.json"))
    out_dir = args.out_dir or args.work_dir.rstrip("/") + "-compression"
    data = evaluation_data(args, run_config)
    classifier = run_config.task == "classify"
    results = {}
    for name in args.variants.split(","):
        path, export_seconds = export(args.work_dir, out_dir, name)
        litert = VARIANTS[name]["format"] == "tflite"
        size, gzipped = sizes(path)
        # The weights alone: variables/ of a SavedModel; model.tflite (graph included) of LiteRT.
        weights, _ = sizes(os.path.join(path, "model.tflite" if litert else "variables"))
        if classifier:
            measured = measure_classifier(args, path, litert, *data)
        else:
            measured = measure_language_model(args, path, litert, data, run_config.model.sequence_length)
        results[name] = {"path": path, "size": size, "gzip": gzipped, "weights": weights, "export_seconds": export_seconds, **measured}
        print(json.dumps({name: {k: v for k, v in results[name].items() if k not in ("predicted",)}}), flush=True)

    base = results.get("float32")
    quality_name = "accuracy" if classifier else "perplexity"
    rows = []
    for name, result in results.items():
        relative = f" ({result['size'] / base['size']:.0%})" if base else ""
        weights_relative = f" ({result['weights'] / base['weights']:.0%})" if base else ""
        agreement = ""
        if classifier and base:
            agree = sum(a == b for a, b in zip(result["predicted"], base["predicted"])) / len(base["predicted"])
            agreement = f" | {agree:.2%}"
        latency = f"{result['latency_ms']:.2f} ms" if result["latency_ms"] is not None else "n/a"
        if result.get("model_alone_ms") is not None:
            latency += f" ({result['model_alone_ms']:.2f} ms in the interpreter)"
        throughput = f"{result['throughput']:,.0f} {result['throughput_unit']}" if result["throughput"] is not None else "n/a"
        quality = f"{result['quality']:.4f}"
        if base and not classifier:
            quality += f" ({result['quality'] / base['quality'] - 1:+.2%})"
        elif base:
            quality += f" ({(result['quality'] - base['quality']) * 100:+.2f} points)"
        if result.get("delegate"):
            name = f"{name} ({result['delegate']} kernels)"
        rows.append(
            f"| {name} | {result['size']:,} B{relative} | {result['weights']:,} B{weights_relative} | {result['gzip']:,} B | {latency} | {throughput} | {quality}{agreement} |"
        )
    what = (
        f"{len(data[0]):,} examples of {args.eval_data or 'the run’s validation split'}"
        if classifier else f"the run's validation text ({len(data):,} characters)"
    )
    header = (
        f"| variant | version directory | weights (variables/ or model.tflite) | directory, gzip -9 | batch-1 latency (median of {args.repeats}) | batch-64 throughput | {quality_name}"
        + (" | labels equal to float32 |" if classifier else " |")
    )
    separator = "| --- " * (header.count("|") - 1) + "|"
    body = (
        (f"{args.note}\n\n" if args.note else "")
        + f"Run: `{args.work_dir}` ({run_config.task}, --model={run_config.model.model}); {quality_name} on {what}."
        + ("" if classifier else f" Latency: one prompt, {args.new_tokens} greedy tokens; throughput: 64 prompts.")
        + f"\n\n{header}\n{separator}\n"
        + "\n".join(rows)
    )
    if not classifier:
        body += "\n\nGreedy continuations (float32 / int8) of the first prompts:\n\n" + "\n".join(
            f"- {json.dumps(a)} / {json.dumps(b)}"
            for a, b in zip(results.get("float32", {}).get("continuations", []), results.get("int8", {}).get("continuations", []))
        )
    common.report(f"Compression: {os.path.basename(args.work_dir.rstrip('/'))}", body, args.no_write)


if __name__ == "__main__":
    main()
