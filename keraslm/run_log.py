"""What a training run leaves for people to read: metrics.json, TensorBoard scalars, loss-curve PNG."""

import json
import os

import tensorflow as tf

from keraslm.config import write_json_atomic
from keraslm.errors import InvalidInputError
from keraslm.files import save_figure_atomic

METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "logs"


def load_records(work_dir):
    """The evaluation records of metrics.json; a damaged file is refused, never overwritten."""
    path = os.path.join(work_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as file:
            records = json.load(file).get("evaluations")
        if not isinstance(records, list) or not all(isinstance(record.get("step"), int) for record in records):
            raise ValueError("no list of evaluations with integer steps")
    except (OSError, ValueError, AttributeError) as error:
        raise InvalidInputError(
            f"{path} cannot be read ({error}); move it aside to let training start a new history"
        ) from None
    return records


def recorded_steps(work_dir):
    return [record["step"] for record in load_records(work_dir)]


class RunLog:
    """One record per evaluation, kept in <work_dir>/metrics.json and mirrored to TensorBoard.

    A resumed run first forgets records past the checkpoint it restarts from, since it will
    measure those steps again. write=False (a multi-worker run's other workers): the records are
    kept in memory only; the chief writes the files.
    """

    def __init__(self, work_dir, resume_step, loss_unit="token", write=True):
        self.work_dir = work_dir
        self.write = write
        # What the loss is averaged over, for the plot's axis: "token", "example".
        self.loss_unit = loss_unit
        self.records = [record for record in load_records(work_dir) if record["step"] <= resume_step]
        # Created on the first record: a run with nothing to train leaves logs/ as it was.
        self._writer = None

    def add(self, record):
        """Appends {'step', 'train_loss', 'val_loss', ...} and rewrites every output."""
        self.records.append(record)
        if not self.write:
            return
        write_json_atomic(os.path.join(self.work_dir, METRICS_FILE), {"evaluations": self.records})
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.work_dir, TENSORBOARD_DIR))
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
        axes.set_ylabel(f"loss (nats/{self.loss_unit})")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        save_figure_atomic(figure, os.path.join(self.work_dir, LOSS_CURVE_FILE))
