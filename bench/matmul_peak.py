"""This machine's measured fp32 matmul throughput: the denominator of MFU.

  python bench/matmul_peak.py [--size=2048] [--repeats=20]

Best of N timed TensorFlow matmuls of two size x size fp32 matrices on all cores, plus numpy's
for comparison (numpy's BLAS may lack the AVX-512 kernels TensorFlow's oneDNN uses).

Then the rate at the matmul shapes of the tinyshakespeare char preset's training step (batch 12 x
context 64 = 768 tokens, width 128), under XLA (what training runs) and without it (oneDNN):
small matmuls run well under the 2048² peak, which bounds the MFU such a model can reach.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


# (rows, inner, columns, transposed left operand, what it is) of the 4x128 preset's step: the
# forward dots, and the weight gradients, which contract over the 768 tokens (dW = Xᵀ · dY). Not
# listed: the input gradients (the forward shapes again) and the attention's 48 small batched dots.
PRESET_SHAPES = [
    (768, 128, 128, False, "attention projection, forward"),
    (768, 128, 512, False, "feed-forward up, forward"),
    (768, 512, 128, False, "feed-forward down, forward"),
    (768, 128, 67, False, "logits, forward"),
    (128, 768, 128, True, "attention projection, weight gradient"),
    (128, 768, 512, True, "feed-forward up, weight gradient"),
]


def shape_gflops(rows, inner, columns, transpose_a, jit_compile, repeats=5, per_call=20):
    """Best-of-repeats rate of `per_call` independent matmuls in one compiled function."""
    import tensorflow as tf

    # Distinct left operands, made outside the timed function, so no product is folded away.
    lefts = [tf.random.normal([inner, rows] if transpose_a else [rows, inner]) for _ in range(per_call)]
    b = tf.random.normal([inner, columns])

    @tf.function(jit_compile=jit_compile)
    def matmuls(lefts, b):
        return tuple(tf.matmul(a, b, transpose_a=transpose_a) for a in lefts)

    def ten_calls():
        for _ in range(10):
            results = matmuls(lefts, b)
        results[-1].numpy()

    return 2 * rows * inner * columns * per_call / (common.best_seconds(ten_calls, repeats) / 10) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no_write", action="store_true")
    args = parser.parse_args()
    tensorflow = common.matmul_gflops(args.size, args.repeats)
    numpy = common.numpy_matmul_gflops(args.size, args.repeats)
    body = (
        f"| fp32 matmul {args.size}² (best of {args.repeats}) | GFLOP/s |\n| --- | --- |\n"
        f"| TensorFlow (the MFU denominator) | {tensorflow:.0f} |\n| numpy | {numpy:.0f} |"
    )
    rows = []
    for rows_, inner, columns, transpose_a, role in PRESET_SHAPES:
        rates = [shape_gflops(rows_, inner, columns, transpose_a, jit) for jit in (True, False)]
        operand = f"[{inner}, {rows_}]ᵀ" if transpose_a else f"[{rows_}, {inner}]"
        rows.append(f"| {role} | {operand} x [{inner}, {columns}] | {rates[0]:.0f} | {rates[1]:.0f} |")
    body += (
        "\n\nAt the char preset's training shapes (768 tokens, width 128), 20 matmuls per call:\n\n"
        "| matmul | shape | XLA GFLOP/s | TensorFlow without XLA (oneDNN) GFLOP/s |\n| --- | --- | --- | --- |\n"
        + "\n".join(rows)
    )
    common.report("Matmul peak", body, args.no_write)


if __name__ == "__main__":
    main()
