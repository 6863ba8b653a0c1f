"""Matplotlib figures for the report, returned as PNG data URIs so the HTML is one offline file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 96


def to_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _model_colors(names: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10")
    return {name: palette(i % 10) for i, name in enumerate(names)}


def learning_curves(histories: dict[str, list[dict]], title: str) -> str:
    """Loss and accuracy per epoch, train solid and valid dashed, one colour per model."""
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = _model_colors(list(histories))
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            ax.plot(epochs, [r[f"train_{metric}"] for r in rows], color=colors[name],
                    label=f"{name} train")
            ax.plot(epochs, [r[f"valid_{metric}"] for r in rows], color=colors[name],
                    linestyle="--", label=f"{name} valid")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=8, loc="lower right", ncol=max(1, len(histories) // 3))
    figure.suptitle(title)
    return to_data_uri(figure)


def confusion_matrices(matrix: np.ndarray, classes: list[str], title: str) -> str:
    """Counts and row-normalised rates side by side (rows: true class, columns: predicted)."""
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(4.0, 0.42 * len(classes) + 2.2)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, label, fmt in ((axes[0], matrix, "counts", "d"),
                                 (axes[1], normalised, "row-normalised (recall)", ".2f")):
        image = ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(label)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true")
        threshold = data.max() / 2 if data.max() > 0 else 1
        if len(classes) <= 20:
            for (i, j), value in np.ndenumerate(data):
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.suptitle(title)
    return to_data_uri(figure)


def parameter_bars(params: dict[str, int], accuracy: dict[str, float], title: str) -> str:
    """Parameter count per model (log scale), annotated with its test accuracy."""
    names = list(params)
    colors = _model_colors(names)
    figure, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.4))
    bars = ax.barh(names, [params[n] for n in names], color=[colors[n] for n in names])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="trainable parameters (log scale)", title=title)
    for bar, name in zip(bars, names, strict=True):
        ax.text(bar.get_width() * 1.05, bar.get_y() + bar.get_height() / 2,
                f"{params[name]:,}  ·  test acc {accuracy[name]:.2%}", va="center", fontsize=9)
    ax.set_xlim(right=max(params.values()) * 40)
    ax.grid(axis="x", alpha=0.3, which="both")
    return to_data_uri(figure)


def sample_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int,
                title: str) -> str:
    """A row of example images for every class (first `per_class` of each in the split)."""
    figure, axes = plt.subplots(len(classes), per_class,
                                figsize=(per_class * 0.9 + 1.6, len(classes) * 0.9 + 0.5),
                                squeeze=False, layout="constrained")
    for row, name in enumerate(classes):
        picks = np.flatnonzero(labels == row)[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(picks):
                image = images[picks[col]]
                if image.shape[0] == 1:
                    ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=255)
                else:
                    ax.imshow(np.transpose(image, (1, 2, 0)))
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(title)
    return to_data_uri(figure)


def class_balance(counts: dict[str, list[int]], classes: list[str], title: str) -> str:
    figure, ax = plt.subplots(figsize=(max(6, 0.55 * len(classes) + 2), 3.2))
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        ax.bar(np.arange(len(classes)) + i * width, values, width, label=split)
    ax.set_xticks(np.arange(len(classes)) + width * (len(counts) - 1) / 2, classes,
                  rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="images", title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(figure)
