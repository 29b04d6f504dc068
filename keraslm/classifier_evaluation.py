"""A classifier export's quality on a labelled file: accuracy, macro F1, per-class figures, confusion matrix.

Computed with numpy from the export's own predictions (keraslm.inference.Classifier), so what is
measured is what TF Serving would answer.
"""

import os
import sys

import numpy as np

from keraslm.errors import InvalidInputError
from keraslm.files import save_figure_atomic


def _progress(done, total, stream=sys.stderr):
    if stream.isatty():
        stream.write(f"\rclassifying: {done:,}/{total:,} texts")
        stream.write("\n" if done >= total else "")
        stream.flush()


def evaluate_classifier(classifier, table, flag="--data", batch_size=256):
    """Metrics of `classifier` on a tables.Table; a label the model does not know names its line."""
    labels = classifier.labels
    index = {name: position for position, name in enumerate(labels)}
    for label, line in zip(table.labels, table.lines):
        if label not in index:
            raise InvalidInputError(
                f"{flag}={table.path}: line {line}: label {label!r} is not one the model was trained on "
                f"(its labels: {', '.join(labels)}); check --label_column, or remove such rows"
            )
    truth = np.array([index[label] for label in table.labels], np.int64)
    predicted = []
    for start in range(0, len(table.texts), batch_size):
        predicted += [index[result.label] for result in classifier.classify(table.texts[start : start + batch_size])]
        _progress(len(predicted), len(table.texts))
    return classification_metrics(truth, np.array(predicted, np.int64), labels)


def classification_metrics(truth, predicted, labels):
    """{accuracy, macro_f1, per_class {label: precision, recall, f1, support}, confusion_matrix, labels, num_examples}.

    confusion_matrix[i][j] counts examples of true label i predicted as j. A class never
    predicted has precision 0 (and never present, recall 0), as scikit-learn's zero_division=0.
    """
    count = len(labels)
    matrix = np.zeros([count, count], np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    true_positives = np.diag(matrix).astype(np.float64)
    predicted_totals, true_totals = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted_totals, out=np.zeros(count), where=predicted_totals > 0)
    recall = np.divide(true_positives, true_totals, out=np.zeros(count), where=true_totals > 0)
    sums = precision + recall
    f1 = np.divide(2 * precision * recall, sums, out=np.zeros(count), where=sums > 0)
    return {
        "accuracy": float(true_positives.sum() / max(1, len(truth))),
        "macro_f1": float(f1.mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(true_totals[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
        "num_examples": int(len(truth)),
    }


CONFUSION_MATRIX_FILE = "confusion_matrix.png"


def plot_confusion_matrix(metrics, plot_dir):
    """Writes <plot_dir>/confusion_matrix.png (counts, rows = true label); returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # Files only; there may be no display.
    from matplotlib import pyplot

    matrix = np.array(metrics["confusion_matrix"])
    labels = metrics["labels"]
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axes = pyplot.subplots(figsize=(size, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, n = {metrics['num_examples']:,}")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        axes.text(column, row, f"{value:,}", ha="center", va="center", color="white" if value > threshold else "black")
    figure.tight_layout()
    os.makedirs(plot_dir, exist_ok=True)
    path = os.path.join(plot_dir, CONFUSION_MATRIX_FILE)
    save_figure_atomic(figure, path)
    return path
