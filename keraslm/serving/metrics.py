"""Counters for GET /monitoring/prometheus/metrics: requests (REST and gRPC) and batch sizes.

The names follow TF Serving's (":tensorflow:serving:request_count",
":tensorflow:serving:batching_session:processed_batch_size"), so dashboards built for it read them.
"""

import collections
import threading


class Metrics:
    """Request counters for /monitoring/prometheus/metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = collections.Counter()  # (model, api, status) -> count

    def count(self, model, api, status):
        """model: "" for names that are not served, so that junk names cannot grow the table."""
        with self._lock:
            self.requests[(model, api, str(status))] += 1

    def snapshot(self):
        with self._lock:
            return dict(self.requests)


def metrics_text(metrics, batch_sizes):
    lines = [
        "# HELP :tensorflow:serving:request_count Requests by model, API and HTTP status.",
        "# TYPE :tensorflow:serving:request_count counter",
    ]
    for (model, api, status), count in sorted(metrics.snapshot().items()):
        lines.append(f':tensorflow:serving:request_count{{model_name="{model}",api="{api}",status="{status}"}} {count}')
    lines += [
        "# HELP :tensorflow:serving:batching_session:processed_batch_size Batches run, by number of rows.",
        "# TYPE :tensorflow:serving:batching_session:processed_batch_size counter",
    ]
    for (model, size), count in sorted(batch_sizes.snapshot().items()):
        lines.append(
            f':tensorflow:serving:batching_session:processed_batch_size{{model_name="{model}",batch_size="{size}"}} {count}'
        )
    return "\n".join(lines) + "\n"


class BatchSizeStats:
    """Counts of batches run, by model and number of rows."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sizes = collections.Counter()

    def record(self, model, size):
        with self._lock:
            self.sizes[(model, size)] += 1

    def snapshot(self):
        with self._lock:
            return dict(self.sizes)
