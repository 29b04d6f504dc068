"""Start-up of keraslm-generate: the whole command's wall time, and where it goes.

  python bench/startup.py                                   # saved_models/shakespeare (the demo model)
  python bench/startup.py --repeats=5 --compare_rewrites    # also grappler settings for the first call

Times, in fresh processes (nothing is warm but the OS file cache, as for a user running the
command twice):

- the command `keraslm-generate --model_dir=... --prompt=ROMEO: --max_new_tokens=200 --seed=1`,
  end to end, as a subprocess (what a user waits for);
- the same steps through the Python API, each phase timed inside the process: importing
  keraslm.inference (TensorFlow and the tensorflow-text ops), keraslm.load (the SavedModel),
  the first generate call, and a second identical call, which is the generation itself; the
  first call's overhead (graph optimization, kernel set-up) is the first minus the second;
- for scale: the bare interpreter (`python -c pass`) and a plain `import tensorflow` (which
  also shows how fast this shared machine is during the run).

With --compare_rewrites the API phases also run with other grappler settings for the
SavedModel's functions than keraslm's (constant folding and layout optimization off): all of
TensorFlow's default passes, and none (grappler's meta optimizer off).

Each measurement is repeated `--repeats` times, interleaved, after one untimed warm-up run; the
table gives the best and the median. The machine is shared: compare figures from one run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# keraslm.saved_model_session._call_config replacements for --compare_rewrites.
REWRITES = {
    "keraslm": "",
    "all grappler passes (TF's default)": """
from tensorflow.core.protobuf import config_pb2
saved_model_session._call_config = config_pb2.ConfigProto
""",
    "grappler off": """
from tensorflow.core.protobuf import config_pb2
def _no_grappler():
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config
saved_model_session._call_config = _no_grappler
""",
}

# Run in a fresh interpreter: each phase of keraslm-generate, timed from inside.
PHASES = """
import json, sys, time
started = time.perf_counter()
import keraslm.inference as inference
from keraslm import saved_model_session
imported = time.perf_counter()
{rewrite}
model = inference.load({model_dir!r})
loaded = time.perf_counter()
first = model.generate([{prompt!r}], max_new_tokens={max_new_tokens}, temperature=0.8, seed=1)
called = time.perf_counter()
second = model.generate([{prompt!r}], max_new_tokens={max_new_tokens}, temperature=0.8, seed=1)
generated = time.perf_counter()
assert first == second
print(json.dumps({{
    "import": imported - started, "load": loaded - imported, "first_call": called - loaded,
    "generation": generated - called, "first_call_overhead": (called - loaded) - (generated - called),
    "keras_imported": "keras" in sys.modules, "modules": len(sys.modules),
}}))
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", default="saved_models/shakespeare", help="Relative to the repository root.")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare_rewrites", action="store_true", help="Also time the API with other grappler settings.")
    parser.add_argument("--note", default="", help="A sentence for the report, e.g. which code version ran.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    return parser.parse_args()


def generate_command(args):
    """The keraslm-generate console script of this interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "keraslm-generate")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "keraslm.cli.generate"]
    return command + [
        f"--model_dir={args.model_dir}", f"--prompt={args.prompt}", f"--max_new_tokens={args.max_new_tokens}", "--seed=1"
    ]


def timed_run(command):
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{completed.stderr[-3000:]}")
    return seconds, completed


def summary(values):
    ordered = sorted(values)
    return f"{ordered[0]:.2f} | {ordered[len(ordered) // 2]:.2f}"


def main():
    args = parse_args()
    command = generate_command(args)
    rewrites = list(REWRITES) if args.compare_rewrites else ["keraslm"]
    phases_code = {
        name: PHASES.format(
            rewrite=REWRITES[name], model_dir=args.model_dir, prompt=args.prompt, max_new_tokens=args.max_new_tokens
        )
        for name in rewrites
    }
    timed_run(command)  # Warms the OS file cache (TensorFlow's libraries, the SavedModel), untimed.
    walls, interpreter, tensorflow, stderr_lines = [], [], [], set()
    phases = {name: [] for name in rewrites}
    # Interleaved, so machine noise hits every measurement alike.
    for _ in range(args.repeats):
        seconds, completed = timed_run(command)
        walls.append(seconds)
        stderr_lines.add(len(completed.stderr.splitlines()))
        interpreter.append(timed_run([sys.executable, "-c", "pass"])[0])
        tensorflow.append(timed_run([sys.executable, "-c", "import tensorflow"])[0])
        for name in rewrites:
            # -P: the repository root (the working directory) is not put first on sys.path, so
            # PYTHONPATH can point the API phases at other code, as it does the console script.
            _, completed = timed_run([sys.executable, "-P", "-c", phases_code[name]])
            phases[name].append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(f"command {seconds:.2f} s; phases {[values[-1] for values in phases.values()]}", flush=True)
    keraslm = phases["keraslm"]
    rows = [
        f"| `keraslm-generate`, end to end (wall) | {summary(walls)} |",
        f"| bare interpreter (`python -c pass`, wall) | {summary(interpreter)} |",
        f"| plain `python -c 'import tensorflow'` (wall), for scale | {summary(tensorflow)} |",
        f"| API: import keraslm.inference (TensorFlow runtime, tensorflow-text ops) | {summary([p['import'] for p in keraslm])} |",
        f"| API: keraslm.load (the SavedModel) | {summary([p['load'] for p in keraslm])} |",
        f"| API: first generate call | {summary([p['first_call'] for p in keraslm])} |",
        f"| API: second generate call (the generation itself) | {summary([p['generation'] for p in keraslm])} |",
        f"| API: first call's overhead (first - second) | {summary([p['first_call_overhead'] for p in keraslm])} |",
    ]
    for name in rewrites[1:]:
        rows += [
            f"| API with {name}: first call's overhead | {summary([p['first_call_overhead'] for p in phases[name]])} |",
            f"| API with {name}: second call (generation) | {summary([p['generation'] for p in phases[name]])} |",
        ]
    keras = sorted({str(p["keras_imported"]).lower() for values in phases.values() for p in values})
    body = (
        (f"{args.note.rstrip('.')}. " if args.note else "")
        + f"Model: {args.model_dir}; `{' '.join(command[1:])}` ({args.max_new_tokens} new tokens, batch 1). "
        f"{args.repeats} repeats in fresh processes after one untimed warm-up run, interleaved; one run of this "
        f"script. Keras imported by the API path: {', '.join(keras)}; lines on the command's stderr: "
        f"{', '.join(str(count) for count in sorted(stderr_lines))}.\n\n"
        "| what | best (s) | median (s) |\n| --- | --- | --- |\n" + "\n".join(rows)
    )
    # common.machine() imports TensorFlow to name the GPU; quietly, as the commands do (when the
    # keraslm measured has keraslm.tf_import: PYTHONPATH can point this script at older code).
    try:
        from keraslm.tf_import import import_tensorflow_quietly

        import_tensorflow_quietly()
    except ImportError:
        pass
    common.report("Start-up: keraslm-generate end to end", body, args.no_write)


if __name__ == "__main__":
    main()
