"""What batching can gain at most: a classifier export's serving_default called directly (no HTTP),
milliseconds per row by batch size, in the graph Session keraslm-serve runs it in.

  python bench/signature_batch.py --model_dir=saved_models/sst2 --texts=data/sst2/dev.tsv

keraslm-serve's batched throughput over sequential batch-1 calls cannot exceed the ratio of
batch 1's ms/row to the batch size's ms/row here (bench/serve.py measures what it reaches).
"""

import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

from keraslm.inference import resolve_model_dir  # noqa: E402  (also registers tensorflow-text's ops)
from keraslm.saved_model_session import SavedModelSession  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="A classifier export (base or version directory).")
    parser.add_argument("--texts", default="data/sst2/dev.tsv", help="TSV whose last column holds the texts.")
    parser.add_argument("--rows", type=int, default=256, help="Texts per measurement (the first N of the file).")
    parser.add_argument("--batch_sizes", default="1,8,32,64", help="Comma-separated batch sizes.")
    parser.add_argument("--repeats", type=int, default=5, help="Best of this many passes over the texts.")
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    args = parser.parse_args()

    path = resolve_model_dir(args.model_dir)
    run = SavedModelSession(path).signature("serving_default")
    with open(args.texts, encoding="utf-8", newline="") as file:
        texts = [row[-1] for index, row in enumerate(csv.reader(file, delimiter="\t")) if index and row][: args.rows]
    run(text=np.array([b"warm-up"], dtype=object))

    def ms_per_row(batch_size, order):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for first in range(0, len(order), batch_size):
                run(text=np.array([text.encode("utf-8") for text in order[first : first + batch_size]], dtype=object))
            best = min(best, time.perf_counter() - start)
        return best / len(order) * 1000

    rows = ["| batch size | ms per row, file order | ms per row, texts sorted by length | rows/s, file order |", "| --- | --- | --- | --- |"]
    by_length = sorted(texts, key=len)
    for batch_size in (int(value) for value in args.batch_sizes.split(",")):
        unsorted, ordered = ms_per_row(batch_size, texts), ms_per_row(batch_size, by_length)
        rows.append(f"| {batch_size} | {unsorted:.3f} | {ordered:.3f} | {1000 / unsorted:,.0f} |")
        print(rows[-1], flush=True)
    body = f"Model: `{path}`; {len(texts)} texts of `{args.texts}`, best of {args.repeats} passes.\n\n" + "\n".join(rows)
    if args.note:
        body = args.note + "\n\n" + body
    common.report("Serving: a classifier signature by batch size (bench/signature_batch.py)", body, no_write=args.no_write)


if __name__ == "__main__":
    main()
