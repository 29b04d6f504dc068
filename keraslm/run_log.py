"""What a training run leaves for people to read: metrics.json, TensorBoard scalars, loss-curve PNG."""

import json
import os

import tensorflow as tf

from keraslm.config import write_json_atomic

METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "logs"


class RunLog:
    """One record per evaluation, kept in <work_dir>/metrics.json and mirrored to TensorBoard.

    A resumed run first forgets records past the checkpoint it restarts from, since it will
    measure those steps again.
    """

    def __init__(self, work_dir, resume_step):
        self.work_dir = work_dir
        self.records = [record for record in self._load() if record["step"] <= resume_step]
        self._writer = tf.summary.create_file_writer(os.path.join(work_dir, TENSORBOARD_DIR))

    def _load(self):
        path = os.path.join(self.work_dir, METRICS_FILE)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as file:
            return json.load(file).get("evaluations", [])

    def add(self, record):
        """Appends {'step', 'train_loss', 'val_loss', ...} and rewrites every output."""
        self.records.append(record)
        write_json_atomic(os.path.join(self.work_dir, METRICS_FILE), {"evaluations": self.records})
        with self._writer.as_default(step=record["step"]):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._writer.flush()
        self._plot()

    def _plot(self):
        import matplotlib

        matplotlib.use("Agg")  # Files only; there may be no display.
        from matplotlib import pyplot

        steps = [record["step"] for record in self.records]
        figure, axes = pyplot.subplots(figsize=(6, 4))
        axes.plot(steps, [record["train_loss"] for record in self.records], marker="o", label="train")
        axes.plot(steps, [record["val_loss"] for record in self.records], marker="o", label="validation")
        axes.set_xlabel("step")
        axes.set_ylabel("loss (nats/token)")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = os.path.join(self.work_dir, LOSS_CURVE_FILE)
        temporary = f"{path}.tmp-{os.getpid()}.png"
        figure.savefig(temporary, dpi=100)
        pyplot.close(figure)
        os.replace(temporary, path)
