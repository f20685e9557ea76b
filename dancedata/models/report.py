"""Evaluation artefacts of a run: metrics.json, confusion_matrix.png, training_curves.png."""
from __future__ import annotations

import json
import os

import numpy as np


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, classes: list) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = true class)."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        true_positive = confusion[i, i]
        predicted_count, support = confusion[:, i].sum(), confusion[i, :].sum()
        precision = true_positive / predicted_count if predicted_count else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    return {
        "accuracy": float((labels == predicted).mean()) if len(labels) else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: list, classes: list, path: str) -> None:
    plt = _pyplot()
    matrix = np.asarray(confusion)
    figure, axes = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), value in np.ndenumerate(matrix):
        if value:
            axes.text(column, row, str(value), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_history(history: dict, path: str) -> None:
    plt = _pyplot()
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for key, values in history.items():
        target = accuracy_axes if "accuracy" in key else loss_axes
        target.plot(range(1, len(values) + 1), values, label=key)
    for target, title in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        target.set_xlabel("epoch")
        target.set_title(title)
        target.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_json(path: str, value) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")


def write_all(out: str, metrics: dict, classes: list, history: dict) -> None:
    write_json(os.path.join(out, "metrics.json"), metrics)
    if "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], classes, os.path.join(out, "confusion_matrix.png"))
    plot_history(history, os.path.join(out, "training_curves.png"))
