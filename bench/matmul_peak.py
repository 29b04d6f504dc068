"""This machine's measured fp32 matmul throughput: the denominator of MFU.

  python bench/matmul_peak.py [--size=2048] [--repeats=20]

Best of N timed TensorFlow matmuls of two size x size fp32 matrices on all cores, plus numpy's
for comparison (numpy's BLAS may lack the AVX-512 kernels TensorFlow's oneDNN uses).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)


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
    common.report("Matmul peak", body, args.no_write)


if __name__ == "__main__":
    main()
