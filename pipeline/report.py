"""Stage 4: render reports/index.html, one self-contained page comparing every model.

A summary of the best model per dataset, then per dataset: split sizes, class balance, data
quality and sample images; the model table with timing; accuracy against parameters with the
Pareto front; the ensemble of all models; learning curves; parameter counts. Per model: learning
curves, confusion matrix, per-class precision/recall/F1 and the most confused pairs, the most
confidently wrong test images, predicted probabilities for a few test images, first-layer filters
and feature maps (convolutional models), weight histograms at initialisation and after training,
and a per-layer parameter table. At the end: the parameters used, git commit, packages, device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import yaml

from pipeline import analysis, experiments, plots, tracking
from pipeline.artifacts import atomic_write, read_json
from pipeline.models import CONV_ARCHITECTURES, LayerRow, ModelConfig, layer_summary
from pipeline.params import Params, load_params
from pipeline.prepare import Split, load_split
from pipeline.train import load_checkpoint, seed_models, select_device

PACKAGES = ("dvc", "torch", "numpy", "pandas", "scikit-learn", "matplotlib", "jinja2", "pydantic")
PROBABILITY_EXAMPLES = 4  # test images shown with every model's class probabilities


@dataclass
class ModelResult:
    name: str
    metrics: dict
    history: list[dict]
    confusion: np.ndarray
    layers: list[LayerRow]
    model: object = None  # the trained torch module
    config: ModelConfig | None = None
    logits: np.ndarray | None = None  # test set
    scores: list[analysis.ClassScores] = field(default_factory=list)
    confused: list[tuple[str, str, int]] = field(default_factory=list)
    figures: dict[str, str | None] = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)  # the seed ensemble, when trained with seeds > 1


@dataclass
class DatasetSection:
    name: str
    classes: list[str]
    quality: dict
    models: list[ModelResult]
    test: Split | None = None
    ensemble: dict = field(default_factory=dict)
    pareto: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> ModelResult:
        return max(self.models, key=lambda m: (m.metrics["test_accuracy"], -m.metrics["params"]))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels * n_classes + predicted,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def model_metrics(summary: dict, payload: dict, history: list[dict], arch: str) -> dict:
    """The numbers the report shows for a model, from dvclive's summary and the checkpoint."""
    run = payload.get("run", {})
    return {
        "arch": arch,
        "params": int(summary["params"]),
        "test_accuracy": summary["test"]["accuracy"],
        "test_loss": summary["test"]["loss"],
        "best_epoch": summary.get("best", {}).get("epoch", "-"),
        "epochs": len(history),
        "train_seconds": summary.get("train_seconds", 0.0),
        "samples_per_second": summary.get("samples_per_second", 0.0),
        "device": run.get("device", "unknown"),
        "device_name": run.get("device_name", "unknown"),
    }


@dataclass(frozen=True)
class Inputs:
    """Where the earlier stages left their outputs (folders named in dvc.yaml)."""

    prepared: Path
    checkpoints: Path
    live: Path


def collect_dataset(name: str, params: Params, inputs: Inputs) -> DatasetSection:
    quality = read_json(inputs.prepared / name / "quality.json")
    classes = quality["classes"]
    shape = tuple(quality["shape"])
    test = load_split(inputs.prepared / name / "test.pkl")
    device = select_device(params.train.device)
    results = []
    for model_name in params.run.models:
        model, payload = load_checkpoint(inputs.checkpoints / name / f"{model_name}.pt")
        config = ModelConfig.from_dict(payload["config"])
        run_dir = inputs.live / name / model_name
        history = tracking.read_history(run_dir)
        channels_last = params.train.channels_last and config.arch in CONV_ARCHITECTURES
        logits = analysis.test_logits(model, test.images, device, params.train.amp, channels_last)
        model.to("cpu")
        predicted = logits.argmax(1)
        confusion = confusion_matrix(test.labels, predicted, len(classes))
        result = ModelResult(
            name=model_name,
            metrics=model_metrics(tracking.read_summary(run_dir), payload, history, config.arch),
            history=history,
            confusion=confusion,
            layers=layer_summary(model, shape),
            model=model,
            config=config,
            logits=logits,
            scores=analysis.per_class_scores(test.labels, predicted, classes),
            confused=analysis.most_confused(confusion, classes),
        )
        copies = seed_models(payload)[1:]  # the rest of the model's seed ensemble
        if copies:
            seeds = payload.get("run", {}).get("seeds") or list(range(len(copies) + 1))
            seed_logits = [logits] + [analysis.test_logits(copy, test.images, device,
                                                           params.train.amp, channels_last)
                                      for copy in copies]
            result.seeds = analysis.seed_ensemble(
                {f"seed {seed}": values for seed, values in zip(seeds, seed_logits, strict=True)},
                test.labels)
        results.append(result)
    section = DatasetSection(name, classes, quality, results, test)
    section.ensemble = analysis.ensemble({m.name: m.logits for m in results}, test.labels)
    section.pareto = analysis.pareto_front(
        {m.name: (m.metrics["params"], m.metrics["test_accuracy"]) for m in results})
    return section


def draw_figures(section: DatasetSection, train_split_path: Path, per_class: int,
                 seed: int) -> None:
    train = load_split(train_split_path)
    ds = section.name
    section.figures["samples"] = plots.sample_grid(
        train.images, train.labels, section.classes, per_class, f"{ds}: training images per class")
    section.figures["balance"] = plots.class_balance(
        section.quality["class_counts"], section.classes, f"{ds}: images per class and split")
    section.figures["curves"] = plots.learning_curves(
        {m.name: m.history for m in section.models}, f"{ds}: learning curves, all models")
    section.figures["params"] = plots.parameter_bars(
        {m.name: m.metrics["params"] for m in section.models},
        {m.name: m.metrics["test_accuracy"] for m in section.models},
        f"{ds}: parameters per model")
    section.figures["scatter"] = plots.accuracy_vs_params(
        {m.name: (m.metrics["params"], m.metrics["test_accuracy"]) for m in section.models},
        section.pareto, f"{ds}: test accuracy vs parameters")
    test = section.test
    examples = np.linspace(0, len(test.labels) - 1, PROBABILITY_EXAMPLES).astype(int)
    for model in section.models:
        title = f"{ds} / {model.name}"
        probabilities = analysis.softmax(model.logits)
        predicted = probabilities.argmax(1)
        model.figures["curves"] = plots.learning_curves(
            {model.name: model.history}, f"{title}: train vs valid")
        model.figures["confusion"] = plots.confusion_matrices(
            model.confusion, section.classes, f"{title}: test confusion matrix")
        model.figures["misclassified"] = plots.misclassified_gallery(
            test.images, test.labels, predicted, probabilities.max(1), section.classes,
            f"{title}: most confidently wrong test images")
        model.figures["probabilities"] = plots.probability_bars(
            test.images[examples], test.labels[examples], probabilities[examples],
            section.classes, f"{title}: predicted probabilities (green: true, red: wrong guess)")
        conv = analysis.first_conv(model.model)
        if conv is not None:
            model.figures["filters"] = plots.conv_filters(
                conv.weight.detach().float().numpy(), f"{title}: first-layer filters")
            model.figures["maps"] = plots.feature_maps(
                analysis.first_block_maps(model.model, test.images[0]),
                f"{title}: first-layer feature maps of test image 0 "
                f"({section.classes[test.labels[0]]})")
        initial = analysis.initial_weights(model.config, seed)
        model.figures["weights"] = plots.weight_histograms(
            {k: v.numpy() for k, v in initial.items()},
            {k: v.detach().float().numpy() for k, v in model.model.named_parameters()},
            f"{title}: weights at initialisation vs after training")


def git_commit(cwd: Path) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def compare_experiments(sections: list[DatasetSection], params: Params, inputs: Inputs,
                        repo_root: Path) -> dict:
    """The workspace next to the committed baseline and the experiments `dvc exp show` lists."""
    runs = [(s.name, m.name) for s in sections for m in s.models]
    found = experiments.list_experiments(repo_root, runs, _relative(inputs.live, repo_root))
    workspace = experiments.Experiment(
        "workspace", experiments.flatten(params.model_dump(mode="json")),
        {(s.name, m.name): m.metrics["test_accuracy"] for s in sections for m in s.models},
        {(s.name, m.name): m.history for s in sections for m in s.models})
    rows = [{"name": e.name, "changed": experiments.changed_params(e, workspace.params),
             "accuracy": e.accuracy} for e in [workspace, *found]]
    figures = {}
    if found:
        for section in sections:
            curves = {m.name: {e.name: e.histories[(section.name, m.name)]
                               for e in [workspace, *found] if (section.name, m.name)
                               in e.histories} for m in section.models}
            figures[section.name] = plots.experiment_overlay(
                curves, f"{section.name}: validation accuracy, workspace vs experiments")
    return {"runs": runs, "rows": rows, "figures": figures, "count": len(found)}


def render(sections: list[DatasetSection], params: Params, environment: dict,
           comparison: dict) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    return template.render(
        sections=sections,
        comparison=comparison,
        params_yaml=yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, width=100),
        environment=environment,
    )


def build_report(params: Params, inputs: Inputs, out: Path,
                 repo_root: Path) -> list[DatasetSection]:
    sections = []
    for name in params.run.datasets:
        section = collect_dataset(name, params, inputs)
        draw_figures(section, inputs.prepared / name / "train.pkl",
                     params.report.samples_per_class, params.train.seed)
        sections.append(section)
    devices = sorted({f"{m.metrics['device']} ({m.metrics['device_name']})"
                      for s in sections for m in s.models})
    environment = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(repo_root),
        "packages": package_versions(),
        "devices": devices,
        "platform": f"{platform.system()} {platform.machine()}",
    }
    comparison = compare_experiments(sections, params, inputs, repo_root)
    html = render(sections, params, environment, comparison)
    with atomic_write(out, "w") as handle:
        handle.write(html)
    return sections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--live", required=True, type=Path, help="the train stage's dvclive "
                        "folders, <live>/<dataset>/<model>")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    inputs = Inputs(args.prepared, args.checkpoints, args.live)
    sections = build_report(params, inputs, args.out, Path(args.params).resolve().parent)
    for section in sections:
        best = section.best
        print(f"{section.name}: best model {best.name} "
              f"({best.metrics['test_accuracy']:.2%} test accuracy, "
              f"{best.metrics['params']:,} parameters)")
    print(f"report written to {args.out}")


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
