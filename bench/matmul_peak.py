"""This machine's measured fp32 matmul throughput: the denominator of MFU.

  python bench/matmul_peak.py [--size=2048] [--repeats=20]

Best of N timed TensorFlow matmuls of two size x size fp32 matrices on all cores, plus numpy's
for comparison (numpy's BLAS may lack the AVX-512 kernels TensorFlow's oneDNN uses).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


def numpy_gflops(size, repeats):
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no_write", action="store_true")
    args = parser.parse_args()
    tensorflow = common.matmul_gflops(args.size, args.repeats)
    numpy = numpy_gflops(args.size, args.repeats)
    body = (
        f"| fp32 matmul {args.size}² (best of {args.repeats}) | GFLOP/s |\n| --- | --- |\n"
        f"| TensorFlow (the MFU denominator) | {tensorflow:.0f} |\n| numpy | {numpy:.0f} |"
    )
    common.report("Matmul peak", body, args.no_write)


if __name__ == "__main__":
    main()
