"""Shared by the benchmark scripts: what machine this is, and appending results to BENCHMARKS.md."""

import datetime
import os
import platform
import shlex
import sys
import time

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")


def machine():
    """'2 cores, AMD EPYC ..., 24 GiB, no GPU, TF 2.21.0' read off this machine now."""
    try:
        import tensorflow as tf
    except ImportError:  # bench/nanogpt_reference.py runs in a PyTorch venv without TensorFlow
        tf = None

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = float("nan")
    if tf is None:
        return f"{os.cpu_count()} cores, {cpu}, {memory_gib:.0f} GiB"
    gpus = tf.config.list_physical_devices("GPU")
    gpu = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus) or "no GPU"
    return f"{os.cpu_count()} cores, {cpu}, {memory_gib:.0f} GiB, {gpu}, TensorFlow {tf.__version__}"


def command_line():
    return "python " + " ".join(shlex.quote(argument) for argument in sys.argv)


def append_section(title, body):
    """Appends '### title (date, machine)' + the command + body to BENCHMARKS.md and prints it."""
    text = (
        f"\n### {title}\n\n{datetime.date.today().isoformat()}; {machine()}\n\n"
        f"Command: `{command_line()}`\n\n{body.rstrip()}\n"
    )
    print(text)
    with open(BENCHMARKS, "a", encoding="utf-8") as file:
        file.write(text)


def matmul_gflops(size=2048, repeats=10):
    """Best-of-N fp32 matmul GFLOP/s of this machine right now (TensorFlow, all cores).

    The denominator for utilization figures, and a gauge of how loaded this shared machine is
    during a run: measure it in the same run as the figures it qualifies.
    """
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    return square_matmul_gflops(lambda: tf.matmul(a, b).numpy(), size, repeats)


def best_seconds(run, repeats):
    """Seconds of the fastest of `repeats` calls of run(), after one untimed warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def square_matmul_gflops(matmul, size, repeats):
    """GFLOP/s of the fastest of `repeats` calls of matmul() (two size x size operands), after a warm-up."""
    return 2 * size**3 / best_seconds(matmul, repeats) / 1e9


def report(title, body, no_write=False):
    """Prints the result, or appends it to BENCHMARKS.md (which prints it too)."""
    if no_write:
        print(body)
    else:
        append_section(title, body)


def preset_config(preset, extra_flags):
    """The RunConfig keraslm-train would build from --flagfile=preset plus extra flags."""
    from absl import flags

    from keraslm.cli import train as train_cli

    train_cli.define_flags()
    flags.FLAGS([sys.argv[0], f"--flagfile={preset}", *extra_flags])
    config = train_cli.config_from_flags()
    config.validate()
    return config


def numpy_matmul_gflops(size=2048, repeats=10):
    """The same with numpy's BLAS: the denominator ../shared/MEASUREMENTS.md used for nanoGPT."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    return square_matmul_gflops(lambda: a @ b, size, repeats)
