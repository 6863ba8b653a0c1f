"""Matplotlib figures for the report, returned as PNG data URIs so the HTML is one offline file."""

from __future__ import annotations

import base64
import io
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from pipeline.cores import usable_cores

if TYPE_CHECKING:
    from pipeline.evaluation import WeightHistogram
    from pipeline.evidence import Calibration, ClassCurves, Interval
    from pipeline.sweep_record import SweepTrial

DPI = 96
PALETTE_COLOURS = 256  # each figure is saved as a palette PNG of at most this many colours
PALETTE_MAX_ERROR = 1.0  # unless that moves its pixels by more than this on average (0..255)


def literal(names: list[str]) -> list[str]:
    """Names from the user's files as matplotlib text: a "$" is a dollar sign, not the start of
    mathtext (which fails on, or typesets, "$x_1$")."""
    return [name.replace("$", r"\$") for name in names]


def to_data_uri(figure: Figure) -> str:
    """The figure as a PNG data URI, trimmed to what it draws plus savefig's padding.

    `savefig(bbox_inches="tight")` lays the whole figure out once more just to find that box,
    and asking the drawn figure for it walks every tick label again (docs/performance.md,
    "Figures"). Drawn once instead, the picture is cut from the pixels to the
    drawn ones, with the padding in the background colour. A figure that draws up to an edge of
    its canvas (a label that may go on past it) is saved by savefig, which widens the canvas."""
    figure.set_dpi(DPI)
    figure.canvas.draw()
    canvas = np.asarray(cast(FigureCanvasAgg, figure.canvas).buffer_rgba())
    background = np.asarray(to_rgba_array(figure.get_facecolor())[0] * 255, np.uint8)
    drawn = np.any(canvas != background, axis=2)
    rows, columns = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    buffer = io.BytesIO()
    if len(rows) and rows[0] > 0 and columns[0] > 0 and rows[-1] < canvas.shape[0] - 1 \
            and columns[-1] < canvas.shape[1] - 1:
        pad = round(plt.rcParams["savefig.pad_inches"] * DPI)
        top, left = rows[0], columns[0]
        height, width = rows[-1] + 1 - top, columns[-1] + 1 - left
        picture = np.empty((height + 2 * pad, width + 2 * pad, 4), np.uint8)
        picture[...] = background
        picture[pad:pad + height, pad:pad + width] = canvas[top:top + height, left:left + width]
        image = Image.fromarray(picture)
    else:
        figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        image = Image.open(buffer)
        buffer = io.BytesIO()
    plt.close(figure)
    # an opaque figure in a 256-colour palette: the page's figures take less than half the
    # bytes of RGBA and look the same (docs/performance.md, "Page size"); one whose colours a
    # palette cannot hold (photos in colour) stays RGB
    rgb = image.convert("RGB")
    palette = rgb.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT,
                           dither=Image.Dither.NONE)
    error = np.abs(np.asarray(palette.convert("RGB"), np.int16)
                   - np.asarray(rgb, np.int16)).mean()
    (palette if error <= PALETTE_MAX_ERROR else rgb).save(buffer, "png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class FigureQueue:
    """Figures to draw, each into `target[key]`, drawn on every core while the caller goes on;
    `draw()` waits for them all and fills them in.

    Every figure is drawn from its own arguments alone, so a pool of processes draws them in
    parallel with the same bytes. Drawing is most of the report stage (docs/performance.md,
    "Figures"); each figure starts as soon as it
    is queued, so the report's own work (the evidence, the experiments) overlaps the drawing.
    Use it as a context manager: leaving the block stops the pool."""

    def __init__(self, workers: int | None = None) -> None:
        """`workers` processes (default: one per usable core; 1 draws in this process)."""
        self.workers = usable_cores() if workers is None else workers
        self.jobs: list[tuple[dict, str, Future | tuple]] = []
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> FigureQueue:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def add(self, target: dict, key: str, draw: Callable[..., str | None], *args) -> None:
        if self.workers <= 1:
            self.jobs.append((target, key, (draw, args)))
            return
        if self._pool is None:
            # fork where it is safe (Linux): the workers start with matplotlib imported
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        self.jobs.append((target, key, self._pool.submit(draw, *args)))

    def draw(self) -> None:
        """Wait for every queued figure and put each where it belongs."""
        for target, key, job in self.jobs:
            target[key] = job.result() if isinstance(job, Future) else job[0](*job[1])
        self.jobs.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _model_colors(names: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10")
    return {name: palette(i % 10) for i, name in enumerate(names)}


def _text_width(labels: list[str], points: float) -> float:
    """About how many inches the widest of `labels` takes at that font size (DejaVu Sans
    averages 0.6 em a character): for margins; a label wider than guessed still shows, drawn
    past the canvas (to_data_uri)."""
    return max(map(len, labels), default=0) * 0.6 * points / 72


def _spaced_subplots(rows: int, columns: int, axes_size: tuple[float, float],
                     gaps: tuple[float, float], margins: tuple[float, float, float, float],
                     height_ratios: list[float] | None = None) -> tuple[Figure, np.ndarray]:
    """Subplots of `axes_size` inches (the height of all rows together, before the gaps) with
    fixed gaps in inches between columns and rows, and margins (left, bottom, right, top) in
    inches around them: room for tick labels, titles and the figure's title. Not constrained
    layout, which measures every label again for each figure (docs/performance.md, "Figures")."""
    left, bottom, right, top = margins
    width = left + columns * axes_size[0] + (columns - 1) * gaps[0] + right
    height = bottom + axes_size[1] + (rows - 1) * gaps[1] + top
    return plt.subplots(rows, columns, figsize=(width, height), squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width,
        "bottom": bottom / height, "top": 1 - top / height,
        "wspace": gaps[0] / axes_size[0], "hspace": gaps[1] / (axes_size[1] / rows),
        "height_ratios": height_ratios})


TITLE_BAND = 0.35  # inches above a grid of images for the figure's title


class _ImageGrid:
    """A grid of small images drawn into one axes whose data units are inches (x right, y down).

    One axes per image made the galleries several times slower (docs/performance.md,
    "Figures"). Each cell is `cell` inches; its image, `image_size` inches square, sits at the
    bottom, centred, with its title in the band above."""

    def __init__(self, rows: int, columns: int, cell: tuple[float, float], image_size: float,
                 title: str, row_labels: float = 0.0):
        """`row_labels`: inches on the left for `row_label` text."""
        self.cell, self.image_size = cell, image_size
        width, height = columns * cell[0], rows * cell[1]
        self.figure = plt.figure(figsize=(row_labels + width, height + TITLE_BAND))
        self.ax = self.figure.add_axes((row_labels / (row_labels + width), 0,
                                        width / (row_labels + width),
                                        height / (height + TITLE_BAND)))
        self.ax.set_axis_off()
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(height, 0)
        self.figure.suptitle(title)

    def image(self, row: int, column: int, pixels: np.ndarray, title: str = "",
              fontsize: float = 7, color: str = "black", frame: bool = False, **imshow) -> None:
        """`pixels`: H x W (drawn with `imshow`'s colour map and limits) or a uint8 C x H x W
        image (grey for one channel, RGB for three); `frame`: a thin black border."""
        if pixels.ndim == 3:
            pixels, imshow = _image_pixels(pixels)
        left = column * self.cell[0] + (self.cell[0] - self.image_size) / 2
        bottom = (row + 1) * self.cell[1] - 0.05
        top = bottom - self.image_size
        self.ax.imshow(pixels, extent=(left, left + self.image_size, bottom, top),
                       aspect="auto", **imshow)
        if frame:
            self.ax.add_patch(Rectangle((left, top), self.image_size, self.image_size,
                                        fill=False, linewidth=0.8, edgecolor="black"))
        if title:
            self.ax.annotate(title, (left + self.image_size / 2, top), xytext=(0, 2),
                             textcoords="offset points", ha="center", va="bottom",
                             fontsize=fontsize, color=color)

    def row_label(self, row: int, label: str) -> None:
        self.ax.text(-0.1, (row + 1) * self.cell[1] - 0.05 - self.image_size / 2, label,
                     ha="right", va="center", fontsize=9)

    def to_data_uri(self) -> str:
        return to_data_uri(self.figure)


def learning_curves(histories: dict[str, list], title: str) -> str:
    """Loss and accuracy per epoch, train solid and valid dashed, one colour per model."""
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    figure.subplots_adjust(bottom=0.15)  # the epoch label inside the canvas (to_data_uri)
    colors = _model_colors(list(histories))
    for name, rows in histories.items():
        epochs = [r.epoch for r in rows]
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            ax.plot(epochs, [getattr(r, f"train_{metric}") for r in rows], color=colors[name],
                    label=f"{name} train")
            ax.plot(epochs, [getattr(r, f"valid_{metric}") for r in rows], color=colors[name],
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
    grid = _ImageGrid(len(classes), per_class, (0.9, 0.9), 0.8, title,
                      row_labels=0.2 + _text_width(classes, 9))
    for row, name in enumerate(classes):
        for column, pick in enumerate(np.flatnonzero(labels == row)[:per_class]):
            grid.image(row, column, images[pick])
        grid.row_label(row, name)
    return grid.to_data_uri()


def augmented_grid(rows: dict[str, np.ndarray], title: str) -> str:
    """Rows of the same training images: as stored, then as augmentation made them (uint8
    N x C x H x W each), each row labelled."""
    labels = list(rows)
    columns = max(len(images) for images in rows.values())
    grid = _ImageGrid(len(labels), columns, (0.9, 0.9), 0.8, title,
                      row_labels=0.2 + _text_width(labels, 9))
    for row, label in enumerate(labels):
        for column, image in enumerate(rows[label]):
            grid.image(row, column, image)
        grid.row_label(row, label)
    return grid.to_data_uri()


def class_balance(counts: dict[str, list[int]], classes: list[str], title: str) -> str:
    figure, ax = plt.subplots(figsize=(max(6, 0.55 * len(classes) + 2), 3.2))
    figure.subplots_adjust(right=0.85)  # the legend beside the bars
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        ax.bar(np.arange(len(classes)) + i * width, values, width, label=split)
    ax.set_xticks(np.arange(len(classes)) + width * (len(counts) - 1) / 2, classes,
                  rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="images", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not on, bars
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(figure)


def _image_pixels(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """What `imshow` takes for a uint8 C x H x W image: grey for one channel, RGB for three."""
    if image.shape[0] == 1:
        return image[0], {"cmap": "gray_r", "vmin": 0, "vmax": 255}
    return np.transpose(image[:3], (1, 2, 0)), {}


def _show_image(ax, image: np.ndarray) -> None:
    pixels, style = _image_pixels(image)
    ax.imshow(pixels, **style)
    ax.set_xticks([])
    ax.set_yticks([])


def accuracy_vs_params(points: dict[str, tuple[int, float]], front: list[str], title: str) -> str:
    """One point per model on a log parameter axis, the Pareto front as a step line."""
    colors = _model_colors(list(points))
    figure, ax = plt.subplots(figsize=(7, 4.2))
    figure.subplots_adjust(bottom=0.13)
    for name, (params, accuracy) in points.items():
        ax.scatter(params, accuracy, s=60, color=colors[name], label=name, zorder=3)
        ax.annotate(name, (params, accuracy), textcoords="offset points", xytext=(6, 4),
                    fontsize=9)
    if len(front) > 1:
        xs = [points[n][0] for n in front]
        ys = [points[n][1] for n in front]
        ax.step(xs, ys, where="post", color="grey", linestyle="--", label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return to_data_uri(figure)


def misclassified_gallery(images: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                          confidence: np.ndarray, classes: list[str], title: str,
                          limit: int = 12) -> str | None:
    """The most confidently wrong test images, with true class, prediction and confidence."""
    wrong = np.flatnonzero(actual != predicted)
    if len(wrong) == 0:
        return None
    picks = wrong[np.argsort(-confidence[wrong])][:limit]
    columns = min(6, len(picks))
    rows = -(-len(picks) // columns)
    grid = _ImageGrid(rows, columns, (1.9, 2.2), 1.75, title)
    for place, index in enumerate(picks):
        grid.image(place // columns, place % columns, images[index],
                   f"true {classes[actual[index]]}\npred {classes[predicted[index]]} "
                   f"({confidence[index]:.0%})", fontsize=8, color="firebrick", frame=True)
    return grid.to_data_uri()


def probability_bars(images: np.ndarray, actual: np.ndarray, probabilities: np.ndarray,
                     classes: list[str], title: str) -> str:
    """For a few test images, side by side: the image above the model's probability for every
    class (compact: one column per image, not one tall row each)."""
    count = len(images)
    figure, axes = _spaced_subplots(
        2, count, (1.95, 0.8 + 0.16 * len(classes)), (0.25, 0.2),
        (0.15 + _text_width(classes, 7), 0.45, 0.15, 0.7), [1.0, 0.16 * len(classes)])
    for column in range(count):
        _show_image(axes[0, column], images[column])
        guess = int(probabilities[column].argmax())
        right = guess == actual[column]
        axes[0, column].set_title(f"true: {classes[actual[column]]}\nguess: {classes[guess]} "
                                  f"({probabilities[column, guess]:.0%})", fontsize=8,
                                  color="black" if right else "firebrick")
        colors = ["seagreen" if i == actual[column] else
                  ("firebrick" if i == guess else "lightsteelblue") for i in range(len(classes))]
        bars = axes[1, column]
        bars.barh(classes, probabilities[column], color=colors)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(labelsize=7)
        if column:
            bars.set_yticklabels([])
        bars.set_xlabel("probability", fontsize=7)
    figure.suptitle(title)
    return to_data_uri(figure)


def _tile(maps: np.ndarray, title: str, cmap: str, limit: int = 32, symmetric: bool = False
          ) -> str:
    """Up to `limit` 2-D maps, eight to a row, each scaled to its own range (symmetric: to
    +-its largest magnitude, so zero is the colour map's middle)."""
    count = min(limit, len(maps))
    columns = min(8, count)
    grid = _ImageGrid(-(-count // columns), columns, (1.0, 1.1), 0.85, title)
    for index in range(count):
        data = maps[index]
        limits: dict[str, Any] = {}
        if symmetric:
            bound = float(np.abs(data).max()) or 1.0
            limits = {"vmin": -bound, "vmax": bound}
        grid.image(index // columns, index % columns, data, f"#{index}", cmap=cmap, **limits)
    return grid.to_data_uri()


def conv_filters(filters: np.ndarray, title: str) -> str:
    """First-layer filters (out x k x k, averaged over input channels), blue-white-red."""
    return _tile(filters, title, "RdBu_r", symmetric=True)


def feature_maps(maps: np.ndarray, title: str) -> str:
    return _tile(maps, title, "viridis")


def weight_histograms(histograms: dict[str, WeightHistogram], title: str) -> str:
    """Per weight tensor: the distribution at initialisation and after training (counts over
    shared bins, as the evaluate stage computed them)."""
    names = list(histograms)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = _spaced_subplots(rows, columns, (2.9, rows * 1.9), (0.7, 0.75),
                                    (0.6, 0.45, 0.3, 0.65))
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        ax.axis("on")
        histogram = histograms[name]
        edges = histogram.edges
        ax.stairs(histogram.initial, edges, fill=True, alpha=0.6, label="initial",
                  color="grey")
        ax.stairs(histogram.trained, edges, fill=True, alpha=0.6, label="trained",
                  color="tab:blue")
        ax.set_title(f"{name} ({histogram.size:,})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("weight value", fontsize=7)
        ax.set_ylabel("count", fontsize=7)
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(title)
    return to_data_uri(figure)


def experiment_overlay(curves: dict[str, dict[str, list]], title: str) -> str:
    """Validation accuracy per epoch, one panel per model, one line per experiment."""
    models = list(curves)
    columns = min(3, len(models))
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 4.2, rows * 3.2),
                                squeeze=False, layout="constrained")
    names = sorted({name for runs in curves.values() for name in runs})
    colors = _model_colors(names)
    for ax in axes.flat:
        ax.axis("off")
    for ax, model in zip(axes.flat, models, strict=False):
        ax.axis("on")
        for name, history in curves[model].items():
            ax.plot([r.epoch for r in history], [r.valid_accuracy for r in history],
                    color=colors[name], label=name,
                    # the workspace thick and solid, experiments dashed on top, so runs with
                    # identical curves stay visible
                    linewidth=3.0 if name == "workspace" else 1.4,
                    linestyle="-" if name == "workspace" else (0, (4, 2)),
                    alpha=0.6 if name == "workspace" else 1.0)
        ax.set(title=model, xlabel="epoch", ylabel="valid accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=9, loc="outside lower center",
                  ncol=min(4, len(labels)))
    figure.suptitle(title)
    return to_data_uri(figure)


def accuracy_intervals(intervals: dict[str, Interval], level: str, title: str) -> str:
    """Test accuracy of every model and ensemble with its bootstrap interval (`level`: "95 %")."""
    names = list(intervals)
    height = 0.38 * len(names) + 1.2
    figure, ax = plt.subplots(figsize=(9, height))
    figure.subplots_adjust(left=(0.2 + _text_width(names, 10)) / 9, bottom=0.55 / height)
    for row, name in enumerate(names):
        value = intervals[name]
        ax.errorbar(100 * value.estimate, row, xerr=[[100 * (value.estimate - value.low)],
                    [100 * (value.high - value.estimate)]], fmt="o", capsize=4,
                    color="#2f6fdf" if "ensemble" not in name else "#2a9d5c")
        ax.annotate(f"{100 * value.estimate:.2f} [{100 * value.low:.1f}, "
                    f"{100 * value.high:.1f}]", (100 * value.high, row),
                    xytext=(6, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel=f"test accuracy (%), bootstrap {level} interval", title=title)
    ax.grid(alpha=0.3, axis="x")
    ax.margins(x=0.15)
    return to_data_uri(figure)


def reliability_diagrams(calibrations: dict[str, Calibration], title: str) -> str:
    """Per model: accuracy against confidence in bins (the diagonal is perfect calibration)."""
    names = list(calibrations)
    columns = min(len(names), 4)
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 2.7 * rows + 0.4),
                                squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        c = calibrations[name]
        ax.plot([0, 1], [0, 1], color="#999", linewidth=1)
        ax.bar(c.bin_confidence, c.bin_accuracy, width=0.06, color="#2f6fdf", alpha=0.75)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}\nECE {c.ece:.3f}, Brier "
               f"{c.brier:.3f}")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("confidence", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return to_data_uri(figure)


def class_curves(curves: dict[str, ClassCurves], classes: list[str], title: str) -> str:
    """Small multiples, two models to a row: each model's one-vs-rest ROC and precision-recall
    curves, a line per class (kept on a fixed grid by the evaluate stage)."""
    names = list(curves)
    rows = -(-len(names) // 2)
    height = 2.3 * rows + 0.9
    figure, axes = plt.subplots(rows, 4, figsize=(12, height), squeeze=False)
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax in axes.flat[2 * len(names):]:
        ax.axis("off")
    for index, name in enumerate(names):
        roc_ax, pr_ax = axes.flat[2 * index], axes.flat[2 * index + 1]
        c = curves[name]
        grid = np.asarray(c.grid)
        for k in range(len(classes)):
            color = palette(k % palette.N)
            roc_ax.plot(grid, np.asarray(c.roc_tpr)[k], color=color, linewidth=1)
            pr_ax.plot(grid, np.asarray(c.pr_precision)[k], color=color, linewidth=1)
        roc_ax.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8, linestyle="--")
        roc_ax.set_title(f"{name}: ROC, mean AUC {np.nanmean(c.roc_auc):.4f}", fontsize=8)
        pr_ax.set_title(f"{name}: PR, mean AP {np.nanmean(c.average_precision):.4f}",
                        fontsize=8)
        roc_ax.set_xlabel("false positive rate", fontsize=7)
        pr_ax.set_xlabel("recall", fontsize=7)
        for ax in (roc_ax, pr_ax):
            ax.set(xlim=(0, 1), ylim=(0, 1.02))
            ax.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], color=palette(k % palette.N)) for k in range(len(classes))]
    figure.legend(handles, classes, loc="upper center", ncol=min(len(classes), 10), fontsize=7,
                  bbox_to_anchor=(0.5, 1 - 0.35 / height))
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
    return to_data_uri(figure)


def saliency_overlay(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """A uint8 3 x H x W picture: the image as the report shows it (grey: dark ink on light)
    with the saliency over it, red where it raises the predicted class, blue where it lowers
    it, as strong as its share of the map's largest magnitude."""
    if image.shape[0] == 1:
        base = np.repeat(255.0 - image[:1].astype(np.float64), 3, axis=0)
    else:
        base = image[:3].astype(np.float64)
    bound = float(np.abs(saliency).max()) or 1.0
    weight = 0.7 * np.clip(np.abs(saliency) / bound, 0, 1)
    tint = np.where(saliency >= 0, np.array([215.0, 40, 40])[:, None, None],
                    np.array([40.0, 90, 215])[:, None, None])
    return np.rint(base * (1 - weight) + tint * weight).astype(np.uint8)


def saliency_gallery(rows: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
                     title: str) -> str:
    """Rows of saliency overlays (`saliency_overlay`), one per kind of image: label ->
    (uint8 images N x C x H x W, maps N x H x W, a caption per image)."""
    columns = max([len(images) for images, _, _ in rows.values()] + [1])
    grid = _ImageGrid(len(rows), columns, (1.25, 1.55), 1.05, title, row_labels=1.6)
    for row, (label, (images, maps, captions)) in enumerate(rows.items()):
        grid.row_label(row, label)
        for column, (image, saliency, caption) in enumerate(zip(images, maps, captions,
                                                                strict=True)):
            grid.image(row, column, saliency_overlay(image, saliency), caption)
    return grid.to_data_uri()


def label_issue_gallery(images: np.ndarray, given: list[str], suggested: list[str],
                        confidence: list[float], title: str) -> str:
    """Suspected label errors: the image, its given label and what the models say instead."""
    count = len(images)
    columns = min(count, 8)
    grid = _ImageGrid(-(-count // columns), columns, (1.45, 1.75), 1.2, title)
    for place, (image, was, now, p) in enumerate(zip(images, given, suggested, confidence,
                                                     strict=False)):
        grid.image(place // columns, place % columns, image,
                   f"given {was}\nmodels: {now} {100 * p:.0f}%", color="#b3261e")
    return grid.to_data_uri()


def accuracy_over_time(curves: dict[str, tuple[list[float], list[float]]], title: str) -> str:
    """Validation accuracy against cumulative training seconds, every model on one axis."""
    figure, ax = plt.subplots(figsize=(9, 3.6))
    colors = _model_colors(list(curves))
    for name, (seconds, accuracy) in curves.items():
        ax.plot(seconds, accuracy, marker=".", color=colors[name], label=name)
    ax.set(xlabel="training time (s)", ylabel="validation accuracy", title=title)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return to_data_uri(figure)


def sweep_history(trials: list[SweepTrial], maximise: bool, objective: str, title: str) -> str:
    """Left: every trial's reported objective by epoch, pruned ones ending in a cross. Right:
    the objective of each finished trial in the order they ran, the best so far as a step."""
    figure, (curve_ax, order_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    figure.subplots_adjust(bottom=0.15, wspace=0.25)
    label = objective.replace("_", " ")
    finished = [t for t in trials if t.state == "complete" and t.value is not None]
    values = [t.value for t in finished if t.value is not None]
    best = (max if maximise else min)(values) if values else None
    for trial in trials:
        if not trial.curve:
            continue
        epochs, reported = zip(*trial.curve, strict=True)
        pruned = trial.state == "pruned"
        color = "0.6" if pruned else ("tab:red" if trial.value == best else "tab:blue")
        curve_ax.plot(epochs, reported, color=color, linewidth=1.6 if color == "tab:red" else 0.9,
                      alpha=0.8)
        if pruned:
            curve_ax.plot(epochs[-1], reported[-1], marker="x", color="0.3", markersize=6)
    curve_ax.set(title="Each trial by epoch (x: pruned there)", xlabel="epoch",
                 ylabel=f"best {label} so far")
    ordered = sorted(trials, key=lambda t: t.number)
    shown = [(t.number, t.value) for t in ordered if t.state == "complete" and t.value is not None]
    if shown:
        numbers, scores = zip(*shown, strict=True)
        order_ax.plot(numbers, scores, "o", color="tab:blue", label="finished")
        running = (np.maximum if maximise else np.minimum).accumulate(np.array(scores))
        order_ax.step(numbers, running, where="post", color="tab:red", label="best so far")
    cut = [(t.number, t.curve[-1][1]) for t in ordered if t.state == "pruned" and t.curve]
    if cut:
        numbers, scores = zip(*cut, strict=True)
        order_ax.plot(numbers, scores, "x", color="0.3", label="pruned (last report)")
    order_ax.set(title="Trials in the order they ran", xlabel="trial", ylabel=label)
    for ax in (curve_ax, order_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if shown or cut:
        order_ax.legend(fontsize=8, loc="lower right" if maximise else "upper right")
    figure.suptitle(title)
    return to_data_uri(figure)


def sweep_importance(weights: dict[str, float], title: str) -> str:
    """Optuna's parameter importances (fANOVA: the share of the objective's variance each
    searched key explains), largest on top."""
    names = sorted(weights, key=lambda k: weights[k])
    figure, ax = plt.subplots(figsize=(6.5, 0.5 + 0.4 * len(names)))
    ax.barh(literal(names), [weights[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (share of the objective's variance)", xlim=(0, 1), title=title)
    ax.grid(axis="x", alpha=0.3)
    return to_data_uri(figure)


def sweep_parallel(trials: list[SweepTrial], space: dict[str, dict], maximise: bool,
                   objective: str, title: str) -> str:
    """Parallel coordinates: one vertical axis per searched key (log keys on a log scale, choices
    in order) and the objective last; a line per trial, coloured by its objective, pruned trials
    dashed grey at their last report."""
    keys = list(space)

    def position(key: str, value: Any) -> float:
        dim = space[key]
        if "choices" in dim:
            choices = [repr(c) for c in dim["choices"]]
            return choices.index(repr(value)) / max(1, len(choices) - 1) \
                if repr(value) in choices else 0.5
        low, high = float(dim["low"]), float(dim["high"])
        if dim.get("log"):
            return (np.log(float(value)) - np.log(low)) / (np.log(high) - np.log(low))
        return (float(value) - low) / (high - low)

    drawn = [t for t in trials if t.state in ("complete", "pruned") and
             all(k in t.params for k in keys)]
    scores = [t.value if t.value is not None else (t.curve[-1][1] if t.curve else None)
              for t in drawn]
    known = [s for s in scores if s is not None]
    low, high = (min(known), max(known)) if known else (0.0, 1.0)
    spread = (high - low) or 1.0
    figure, ax = plt.subplots(figsize=(max(5.0, 1.8 * (len(keys) + 1)), 3.8))
    cmap = plt.get_cmap("viridis" if maximise else "viridis_r")
    for trial, value in zip(drawn, scores, strict=True):
        ys = [position(k, trial.params[k]) for k in keys]
        ys.append(0.5 if value is None else (value - low) / spread)
        if trial.state == "pruned":
            ax.plot(range(len(ys)), ys, color="0.6", linestyle="--", linewidth=0.9)
        else:
            ax.plot(range(len(ys)), ys, color=cmap((value - low) / spread if value is not None
                                                    else 0.5), linewidth=1.6)
    for index, key in enumerate(keys):
        dim = space[key]
        ax.axvline(index, color="0.2", linewidth=0.8)
        if "choices" in dim:
            ends = [str(c) for c in (dim["choices"][0], dim["choices"][-1])]
        else:
            ends = [f"{float(dim['low']):.3g}", f"{float(dim['high']):.3g}"]
        ax.text(index, -0.06, ends[0], ha="center", va="top", fontsize=8)
        ax.text(index, 1.06, ends[1], ha="center", va="bottom", fontsize=8)
    ax.axvline(len(keys), color="0.2", linewidth=0.8)
    ax.text(len(keys), -0.06, f"{low:.4g}", ha="center", va="top", fontsize=8)
    ax.text(len(keys), 1.06, f"{high:.4g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys) + 1),
                  literal([*keys, objective.replace("_", " ")]), fontsize=9)
    ax.tick_params(axis="x", pad=18)
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.2)
    ax.set_xlim(-0.3, len(keys) + 0.3)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)
    return to_data_uri(figure)
