"""keraslm-serve under load: sequential batch-1 calls against concurrent clients, batching off and on.

  python bench/serve.py --classifier_dir=saved_models/sst2 --generator_dir=saved_models/shakespeare
  python bench/serve.py --classifier_dir=saved_models/sst2 --max_batch_size=16,32 --batch_timeout_micros=2000,5000

Starts `keraslm-serve` itself (`python -m keraslm.cli.serve`, REST only, on a free 127.0.0.1 port)
with both models: once without --enable_batching, then once per batching setting with
--enable_batching and a --batching_parameters_file written to a temporary directory. The
batching flags take comma-separated lists of one length (or one value, repeated): entry i of each
is one setting, so settings are compared in one sitting. Each server is ready when
`GET /v1/models/NAME` answers 200 for every model and is stopped with SIGTERM after.

For each model and server: a warm-up (not counted: a few sequential calls, then one concurrent
round), then
- sequential: --sequential_requests batch-1 calls from one client, one after another;
- concurrent: --requests calls, one row each, from --clients threads, each with its own keep-alive
  http.client connection (with TCP_NODELAY, as requests/urllib3 set it), taking the next request
  until all are sent.
The classifier gets `serving_default` with `{"instances": [{"text": ...}]}`, texts from
--texts (SST-2 dev sentences); the generator gets `generate` with all eight inputs and a
different seed per request, prompts cut from --prompts.

Reported per run: requests, errors (non-200 answers, unreadable answers or exceptions; the first
one's text), throughput (requests / wall time from the first send to the last answer), latency
percentiles measured by the client, the batch sizes the server ran in that run (the difference of
`GET /monitoring/prometheus/metrics` before and after), and CPU seconds per request of the server
process (all its threads, /proc) and of this client process, to show which side the cores went
to. The machine is shared: compare figures from one run only.
"""

import argparse
import http.client
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  (bench/common.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER, GENERATOR = "classifier", "generator"
BATCH_SIZE_METRIC = re.compile(r'^:tensorflow:serving:batching_session:processed_batch_size\{(?:model_name="[^"]*",)?batch_size="(\d+)"\} (\d+)$', re.M)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier_dir", default="", help="A classifier's export base directory (numbered versions); empty: none.")
    parser.add_argument("--generator_dir", default="", help="A language model's export base directory; empty: none.")
    parser.add_argument("--texts", default=os.path.join(REPO, "data", "sst2", "dev.tsv"), help="TSV/CSV whose text column the classifier gets.")
    parser.add_argument("--prompts", default=os.path.join(REPO, "data", "tinyshakespeare", "input.txt"), help="Text file whose lines start the generator's prompts.")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent clients (threads, one connection each).")
    parser.add_argument("--sequential_requests", type=int, default=200, help="Classifier: sequential batch-1 calls.")
    parser.add_argument("--requests", type=int, default=2000, help="Classifier: calls under concurrent load.")
    parser.add_argument("--generator_sequential_requests", type=int, default=40, help="Generator: sequential batch-1 calls.")
    parser.add_argument("--generator_requests", type=int, default=320, help="Generator: calls under concurrent load.")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="Generator: tokens per request.")
    parser.add_argument("--max_batch_size", default="32", help="Batching: rows per batch (comma-separated: one setting each).")
    parser.add_argument("--batch_timeout_micros", default="2000", help="Batching: wait for a batch to fill (comma-separated).")
    parser.add_argument("--num_batch_threads", default="2", help="Batching: batches run at once per signature (comma-separated); 2 = the cores here.")
    parser.add_argument("--max_enqueued_batches", type=int, default=100, help="Batching: queue bound, in batches.")
    parser.add_argument(
        "--server_command", default="",
        help="The server to start instead of `python -m keraslm.cli.serve` (shell words; it gets keraslm-serve's flags), "
        "e.g. a patched copy to measure a change, or tensorflow_model_server.",
    )
    parser.add_argument("--start_timeout", type=float, default=300, help="Seconds to wait for the server to serve every model.")
    parser.add_argument("--note", default="", help="A sentence for BENCHMARKS.md.")
    parser.add_argument("--no_write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    args = parser.parse_args()
    if not args.classifier_dir and not args.generator_dir:
        parser.error("give --classifier_dir, --generator_dir or both")
    return args


def batching_settings(args):
    """[(max_batch_size, batch_timeout_micros, num_batch_threads)] from the comma-separated flags."""
    lists = [[int(value) for value in str(flag).split(",")] for flag in (args.max_batch_size, args.batch_timeout_micros, args.num_batch_threads)]
    length = max(len(values) for values in lists)
    if any(len(values) not in (1, length) for values in lists):
        sys.exit("--max_batch_size, --batch_timeout_micros and --num_batch_threads: give lists of one length (or one value)")
    return list(zip(*[values * length if len(values) == 1 else values for values in lists]))


# === Request bodies ===


def read_texts(path, count):
    """The text column of a TSV/CSV table (content, text, sentence or review), in file order."""
    import csv

    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file, delimiter="\t" if path.endswith(".tsv") else ",")
        column = next((name for name in ("content", "text", "sentence", "review") if name in (reader.fieldnames or [])), None)
        if column is None:
            sys.exit(f"--texts={path}: no content/text/sentence/review column (columns: {reader.fieldnames})")
        texts = [row[column] for row in reader if row[column].strip()]
    return [texts[index % len(texts)] for index in range(count)]


def read_prompts(path, count):
    """Prompts: the first 24 characters of the file's non-empty lines."""
    with open(path, encoding="utf-8") as file:
        lines = [line.strip()[:24] for line in file if line.strip()]
    return [lines[index % len(lines)] for index in range(count)]


def classifier_bodies(args, count):
    return [json.dumps({"instances": [{"text": text}]}).encode() for text in read_texts(args.texts, count)]


def generator_bodies(args, count):
    return [
        json.dumps({
            "signature_name": "generate",
            "instances": [{
                "prompt": prompt, "max_new_tokens": args.max_new_tokens, "temperature": 0.8, "top_k": 0, "top_p": 1.0,
                "repetition_penalty": 1.0, "seed": index, "stop": "",
            }],
        }).encode()
        for index, prompt in enumerate(read_prompts(args.prompts, count))
    ]


# === The server ===


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """keraslm-serve in a subprocess, serving `models` ({name: base path}); stderr goes to a log file."""

    def __init__(self, models, temp_dir, setting=None, max_enqueued_batches=100, server_command=""):
        self.port = free_port()
        tag = "off" if setting is None else "_".join(map(str, setting))
        config = os.path.join(temp_dir, "models.config")
        with open(config, "w", encoding="utf-8") as file:
            entries = "".join(
                f'  config {{ name: "{name}" base_path: "{os.path.abspath(path)}" model_platform: "tensorflow" }}\n'
                for name, path in models.items()
            )
            file.write("model_config_list {\n" + entries + "}\n")
        command = shlex.split(server_command) if server_command else [sys.executable, "-m", "keraslm.cli.serve"]
        command += [f"--rest_api_port={self.port}", "--port=0", f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"]
        if setting is not None:
            max_batch_size, timeout, threads = setting
            parameters = os.path.join(temp_dir, f"batching_{tag}.config")
            with open(parameters, "w", encoding="utf-8") as file:
                file.write(
                    f"max_batch_size {{ value: {max_batch_size} }}\nbatch_timeout_micros {{ value: {timeout} }}\n"
                    f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\nnum_batch_threads {{ value: {threads} }}\n"
                )
            command += ["--enable_batching", f"--batching_parameters_file={parameters}"]
        self.log_path = os.path.join(temp_dir, f"server_{tag}.log")
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115  closed in stop()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self.models = list(models)

    def log_tail(self, lines=20):
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return "".join(file.readlines()[-lines:])

    def wait_ready(self, timeout):
        """Seconds until GET /v1/models/NAME answered 200 for every model."""
        deadline = time.perf_counter() + timeout
        pending = list(self.models)
        while pending:
            if self.process.poll() is not None:
                sys.exit(f"keraslm-serve exited with {self.process.returncode} before serving:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                self.stop()
                sys.exit(f"keraslm-serve did not serve {pending} within {timeout:.0f} s:\n{self.log_tail()}")
            try:
                status, _ = request(self.port, "GET", f"/v1/models/{pending[0]}")
            except OSError:
                status = None
            if status == 200:
                pending.pop(0)
            else:
                time.sleep(0.2)
        return time.perf_counter() - self.started

    def batch_sizes(self):
        """{rows: batches run} so far, from the Prometheus metrics."""
        _, text = request(self.port, "GET", "/monitoring/prometheus/metrics")
        return {int(size): int(count) for size, count in BATCH_SIZE_METRIC.findall(text.decode())}

    def cpu_seconds(self):
        """User + system CPU seconds of the server process, all threads, so far."""
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self):
        """SIGTERM, then the exit status (killed after 60 s)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = f"killed after 60 s (no exit on SIGTERM): {self.process.wait()}"
        self._log.close()
        return code


class Connection(http.client.HTTPConnection):
    """http.client with TCP_NODELAY, as urllib3 (requests) sets it.

    http.client sends a POST's headers and body in two send() calls; without TCP_NODELAY, Nagle's
    algorithm holds the body until the server acknowledges the headers, which Linux delays by up
    to 40 ms: batch-1 calls then take about 50 ms whatever the server does.
    """

    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def request(port, method, path, body=None):
    connection = Connection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# === The load ===


def run_load(port, model, bodies, clients):
    """Sends every body (one request each) from `clients` threads; (latencies s, errors, first error, wall s)."""
    path = f"/v1/models/{model}:predict"
    latencies = [None] * len(bodies)
    errors = []
    next_index = itertools.count().__next__  # atomic under the GIL
    ready = threading.Barrier(clients + 1)
    ends = []

    def client():
        connection = Connection("127.0.0.1", port, timeout=120)
        connection.connect()
        ready.wait()
        while True:
            index = next_index()
            if index >= len(bodies):
                break
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=bodies[index], headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                latencies[index] = time.perf_counter() - started
                if response.status != 200:
                    errors.append(f"HTTP {response.status}: {payload[:300].decode(errors='replace')}")
                elif len(json.loads(payload).get("predictions", ())) != 1:
                    errors.append(f"HTTP 200 without one prediction: {payload[:300].decode(errors='replace')}")
            except Exception as error:  # noqa: BLE001  Counted and reported, the load goes on.
                latencies[index] = time.perf_counter() - started
                errors.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = Connection("127.0.0.1", port, timeout=120)
        ends.append(time.perf_counter())
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return latencies, errors, max(ends) - started


def measure(server, model, bodies, clients):
    """One run: its figures as a dict."""
    sizes_before = server.batch_sizes()
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    latencies, errors, wall = run_load(server.port, model, bodies, clients)
    server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
    sizes_after = server.batch_sizes()
    sizes = {size: count - sizes_before.get(size, 0) for size, count in sizes_after.items() if count > sizes_before.get(size, 0)}
    latencies = sorted(latencies)
    batches = sum(sizes.values())
    return {
        "requests": len(bodies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "throughput": len(bodies) / wall,
        "p50": percentile(latencies, 50) * 1000,
        "p90": percentile(latencies, 90) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "max": latencies[-1] * 1000,
        "batches": batches,
        "mean_batch": sum(size * count for size, count in sizes.items()) / batches if batches else None,
        "max_batch": max(sizes) if sizes else None,
        "sizes": sizes,
        "server_cpu_ms": server_cpu / len(bodies) * 1000,
        "client_cpu_ms": client_cpu / len(bodies) * 1000,
        "cores_busy": (server_cpu + client_cpu) / wall,
        "wall": wall,
    }


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def bench_server(args, models, temp_dir, setting):
    """Starts a server, measures each model sequential then concurrent; {(model, load): figures}."""
    server = Server(models, temp_dir, setting, args.max_enqueued_batches, args.server_command)
    label = "off" if setting is None else "max_batch_size {}, timeout {} µs, {} thread(s)".format(*setting)
    print(f"server, batching {label}: starting", file=sys.stderr, flush=True)
    results = {}
    try:
        ready = server.wait_ready(args.start_timeout)
        print(f"  ready after {ready:.1f} s", file=sys.stderr, flush=True)
        for model in models:
            sequential, concurrent = (
                (args.sequential_requests, args.requests) if model == CLASSIFIER
                else (args.generator_sequential_requests, args.generator_requests)
            )
            make = classifier_bodies if model == CLASSIFIER else generator_bodies
            bodies = make(args, sequential + concurrent + 8 + 2 * args.clients)
            # Warm-up: the first call of a signature prepares its graph; each batch size, its kernels.
            run_load(server.port, model, bodies[:8], 1)
            run_load(server.port, model, bodies[8 : 8 + 2 * args.clients], args.clients)
            rest = bodies[8 + 2 * args.clients :]
            for load, count, clients in (("sequential", sequential, 1), ("concurrent", concurrent, args.clients)):
                figures = measure(server, model, rest[:count], clients)
                rest = rest[count:]
                results[(model, load)] = figures
                print(
                    f"  {model} {load}: {figures['throughput']:.1f} req/s, p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms, "
                    f"errors {figures['errors']}, rows per batch {batch_cell(figures)}",
                    file=sys.stderr, flush=True,
                )
    finally:
        code = server.stop()
    if code != 0:
        print(f"  keraslm-serve exited with {code} after SIGTERM:\n{server.log_tail()}", file=sys.stderr)
    return label, results, code


# === The report ===


def batch_cell(figures):
    if not figures["batches"]:
        return "–"
    return f"{figures['mean_batch']:.1f} ({figures['batches']:,} batches, max {figures['max_batch']})"


def main():
    args = parse_args()
    models = {}
    if args.classifier_dir:
        models[CLASSIFIER] = args.classifier_dir
    if args.generator_dir:
        models[GENERATOR] = args.generator_dir
    settings = [None] + batching_settings(args)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as temp_dir:
        for setting in settings:
            runs.append(bench_server(args, models, temp_dir, setting))

    header = (
        "| model | batching | load | requests | errors | requests/s | p50 ms | p90 ms | p99 ms | max ms | p99 / p50 "
        "| rows per batch: mean | server CPU ms / request | client CPU ms / request | cores busy |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    rows, notes = [], []
    for label, results, code in runs:
        if code != 0:
            notes.append(
                f"- The server with batching {label} exited with {code} after SIGTERM"
                + (" (killed by the signal: it did not shut down cleanly)." if code == -signal.SIGTERM else ".")
            )
        for (model, load), f in results.items():
            rows.append(
                f"| {model} | {label} | {load}{f' ({args.clients} clients)' if load == 'concurrent' else ''} | {f['requests']:,} "
                f"| {f['errors']} | {f['throughput']:,.1f} | {f['p50']:.1f} | {f['p90']:.1f} | {f['p99']:.1f} | {f['max']:.1f} "
                f"| {f['p99'] / f['p50']:.2f} | {batch_cell(f)} | {f['server_cpu_ms']:.2f} | {f['client_cpu_ms']:.2f} "
                f"| {f['cores_busy']:.2f} |"
            )
            if f["errors"]:
                notes.append(f"- {model}, batching {label}, {load}: {f['errors']} errors; the first: `{f['first_error']}`")

    targets = []
    baseline = runs[0][1]
    total_errors = sum(f["errors"] for _, results, _ in runs for f in results.values())
    if CLASSIFIER in models:
        sequential = baseline[(CLASSIFIER, "sequential")]["throughput"]
        for label, results, _ in runs[1:]:
            batched = results[(CLASSIFIER, "concurrent")]
            speedup = batched["throughput"] / sequential
            spread = batched["p99"] / batched["p50"]
            targets.append(
                f"| classifier, batching {label} | {batched['throughput']:,.1f} / {sequential:,.1f} = "
                f"**{speedup:.2f}x** {'(met)' if speedup >= 4 else '(missed)'} | {batched['p99']:.1f} / {batched['p50']:.1f} = "
                f"**{spread:.2f}** {'(met)' if spread <= 3 else '(missed)'} |"
            )
    if GENERATOR in models:
        sequential = baseline[(GENERATOR, "sequential")]["throughput"]
        for label, results, _ in runs[1:]:
            batched = results[(GENERATOR, "concurrent")]
            targets.append(
                f"| generator, batching {label} | {batched['throughput']:,.1f} / {sequential:,.1f} = "
                f"{batched['throughput'] / sequential:.2f}x | {batched['p99']:.1f} / {batched['p50']:.1f} = "
                f"{batched['p99'] / batched['p50']:.2f} |"
            )

    lines = []
    if args.note:
        lines += [args.note, ""]
    if args.server_command:
        lines += [f"Server: `{args.server_command}` (not keraslm-serve as installed).", ""]
    lines += [
        "Models: " + ", ".join(f"{name} `{path}`" for name, path in models.items()) + f". Classifier: `serving_default`, one "
        f"text per request from `{os.path.relpath(args.texts, REPO)}`; generator: `generate`, one prompt per request, "
        f"max_new_tokens {args.max_new_tokens}, temperature 0.8, top_k 0, top_p 1.0, repetition_penalty 1.0, a seed "
        f"per request, stop \"\". Clients on 127.0.0.1: threads with one keep-alive `http.client` connection each (TCP_NODELAY); "
        f"latency is the client's, send to last byte. Server CPU: the keraslm-serve process (all threads); "
        f"client CPU: this process; cores busy: both over the run's wall time (of {os.cpu_count()}). "
        f"max_enqueued_batches {args.max_enqueued_batches}.",
        "",
        header,
        *rows,
        "",
        "Targets: batched concurrent classifier throughput ÷ sequential batch-1 throughput without batching ≥ 4x; "
        "p99 ÷ p50 of the batched concurrent run ≤ 3; no errors.",
        "",
        "| run | concurrent batched ÷ sequential unbatched, requests/s | p99 ÷ p50, ms |",
        "| --- | --- | --- |",
        *targets,
        "",
        f"Errors in all runs: **{total_errors}**{' (met)' if total_errors == 0 else ' (missed)'}.",
    ]
    concurrent = [f for _, results, _ in runs for (_, load), f in results.items() if load == "concurrent"]
    busiest = max(concurrent, key=lambda f: f["client_cpu_ms"])
    fastest = max(concurrent, key=lambda f: f["throughput"])
    lines += [
        "",
        f"The client is not the bottleneck: it spent at most {busiest['client_cpu_ms']:.2f} ms of CPU per request under "
        f"concurrent load, so one core would drive {1000 / busiest['client_cpu_ms']:,.0f} requests/s; the fastest concurrent "
        f"run reached {fastest['throughput']:,.0f}, the client using {fastest['client_cpu_ms'] * fastest['throughput'] / 1000:.2f} "
        f"of the {os.cpu_count()} cores it shares with the server.",
    ]
    if notes:
        lines += ["", *notes]
    common.report("Serving: keraslm-serve under load (bench/serve.py)", "\n".join(lines), args.no_write)


if __name__ == "__main__":
    main()
