"""The report: read what the earlier stages wrote and render reports/index.html.

A summary of the best model per dataset, then per dataset: split sizes, class balance, data
quality and sample images; the model table; accuracy against parameters with the Pareto front;
the ensemble of all models; learning curves; parameter counts. Per model: learning curves,
confusion matrix, per-class precision/recall/F1 and the most confused pairs, the most
confidently wrong test images, predicted probabilities for a few test images, first-layer
filters and feature maps (convolutional models), weight histograms at initialisation and after
training, and a per-layer parameter table. At the end: the parameters used, packages, device.

Everything on the page comes from files DVC tracks (prepared splits, evaluations, dvclive
metrics), so the same inputs give the same bytes. What differs between runs and machines (train
times, the generation time, the git state, the experiments `dvc exp show` lists) goes to a
sidecar script beside the page, which fills those slots when the page opens.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
import yaml

from pipeline import (
    analysis,
    error_browser,
    evidence,
    experiments,
    plots,
    reproduction,
    revisions,
    tracking,
)
from pipeline.artifacts import atomic_write, read_json
from pipeline.cli import phase
from pipeline.datasets import PIXEL_MAX
from pipeline.errors import PipelineError
from pipeline.evaluation import Evaluation, load_evaluation
from pipeline.layout import QUALITY_FILE, evaluation_file, split_file, timing_file
from pipeline.params import Augment, Params
from pipeline.splits import Split, load_split
from pipeline.sweep_record import TOP_TRIALS, SweepSummary, SweepTrial, read_summaries

PACKAGES = ("dvc", "torch", "numpy", "pandas", "scikit-learn", "matplotlib", "jinja2", "pydantic")
PROBABILITY_EXAMPLES = 4  # test images shown with every model's class probabilities
LABEL_ISSUES_SHOWN = 24  # the most doubtful suspected label errors, in the table and gallery
FLIPS_SHOWN = 16  # per experiment, model and direction, in What flipped
ERROR_IMAGES_PER_LIST = 24  # click-through: the most confident of a confusion cell, the least
                            # sure of a class, per view (pipeline/error_browser.py)


@dataclass
class ModelResult:
    name: str
    summary: tracking.Summary
    history: list[tracking.EpochRow]
    evaluation: Evaluation
    timing: tracking.Timing | None = None
    figures: dict[str, str | None] = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)  # the seed ensemble, when trained with seeds > 1

    @property
    def metrics(self) -> dict:
        return {"arch": self.evaluation.arch, "params": self.summary.params,
                "test_accuracy": self.summary.test_accuracy, "test_loss": self.summary.test_loss,
                "best_epoch": self.summary.best_epoch, "epochs": len(self.history)}

    @property
    def logits(self) -> np.ndarray:
        return self.evaluation.logits[0]


@dataclass
class DatasetSection:
    name: str
    classes: list[str]
    quality: dict
    models: list[ModelResult]
    test: Split
    ensemble: dict = field(default_factory=dict)
    pareto: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)  # see dataset_evidence
    draw: dict = field(default_factory=dict)  # the draw canvas's data, see draw_data
    errors: dict = field(default_factory=dict)  # the click-through's data, see error_browser

    @property
    def best(self) -> ModelResult:
        return max(self.models, key=lambda m: (m.summary.test_accuracy, -m.summary.params))


@dataclass(frozen=True)
class Inputs:
    """Where the earlier stages left their outputs (paths named in dvc.yaml)."""

    prepared: Path
    evaluation: Path
    live: Path
    timing: Path  # git-ignored timing files, shown through the sidecar only
    sweeps: Path  # pipeline-sweep's summaries (README: Sweeps)


@dataclass
class SweepSection:
    """One sweep's part of the page (#<dataset>-sweep), drawn from its summary."""

    summary: SweepSummary
    top: list[SweepTrial]
    figures: dict[str, str] = field(default_factory=dict)


def collect_sweeps(folder: Path, queue: plots.FigureQueue) -> dict[str, list[SweepSection]]:
    """Every sweep summary, by dataset, its figures queued."""
    found: dict[str, list[SweepSection]] = {}
    for summary in read_summaries(folder):
        section = SweepSection(summary, summary.finished()[:TOP_TRIALS])
        title = f"{summary.dataset}/{summary.model}: sweep {summary.name}"
        queue.add(section.figures, "history", plots.sweep_history, summary.trials,
                  summary.maximise, summary.objective, title)
        if summary.importance:
            queue.add(section.figures, "importance", plots.sweep_importance, summary.importance,
                      f"{title}: parameter importance")
        if len(summary.space) and any(t.state in ("complete", "pruned") for t in summary.trials):
            queue.add(section.figures, "parallel", plots.sweep_parallel, summary.trials,
                      summary.space, summary.maximise, summary.objective,
                      f"{title}: every trial's values")
        found.setdefault(summary.dataset, []).append(section)
    return found


def collect_dataset(name: str, params: Params, inputs: Inputs) -> DatasetSection:
    quality = read_json(inputs.prepared / name / QUALITY_FILE)
    classes = quality["classes"]
    test = load_split(inputs.prepared / name / split_file("test"))
    results = []
    for model_name in params.run.models:
        run_dir = inputs.live / name / model_name
        evaluation = load_evaluation(inputs.evaluation / name / evaluation_file(model_name))
        result = ModelResult(
            name=model_name,
            summary=tracking.read_summary(run_dir),
            history=tracking.read_history(run_dir),
            evaluation=evaluation,
            timing=tracking.read_timing(inputs.timing / name / timing_file(model_name)),
        )
        if len(evaluation.logits) > 1:
            result.seeds = analysis.seed_ensemble(
                {f"seed {seed}": values
                 for seed, values in zip(evaluation.seeds, evaluation.logits, strict=True)},
                test.labels)
        results.append(result)
    section = DatasetSection(name, classes, quality, results, test)
    section.ensemble = analysis.ensemble({m.name: m.logits for m in results}, test.labels)
    section.pareto = analysis.pareto_front(
        {m.name: (m.summary.params, m.summary.test_accuracy) for m in results})
    section.draw = draw_data(section, params)
    return section


def dataset_evidence(models: list[ModelResult], labels: np.ndarray) -> dict:
    """What compares the models of one dataset on the same test images: bootstrap intervals
    (models, seed ensembles, the all-model ensemble), McNemar's test for every pair with the
    verdict it supports, suspected label errors, and epochs to a share of the best accuracy."""
    correct = {m.name: m.logits.argmax(1) == labels for m in models}
    tests = evidence.compare_all(correct)
    intervals = {}
    for m in models:
        intervals[m.name] = m.evaluation.interval
        if m.evaluation.seed_interval is not None:
            intervals[f"{m.name} (seed ensemble)"] = m.evaluation.seed_interval
    if len(models) > 1:
        mean_logits = np.mean([m.logits for m in models], axis=0)
        intervals["all-model ensemble"] = evidence.bootstrap_accuracy(
            mean_logits.argmax(1) == labels)
    probabilities = np.mean([analysis.softmax(m.logits) for m in models], axis=0)
    return {
        "tests": tests,
        "verdict": evidence.verdict({n: float(c.mean()) for n, c in correct.items()}, tests),
        "intervals": intervals,
        "label_issues": evidence.label_issues(probabilities, labels),
        "label_issue_doubt": evidence.label_issue_doubt(probabilities, labels),
        "label_quality": evidence.label_quality(probabilities, labels),
        "milestones": {m.name: evidence.time_to_accuracy([r.valid_accuracy for r in m.history],
                                                         None) for m in models},
    }


def draw_data(section: DatasetSection, params: Params) -> dict:
    """What the page's draw canvas needs: the drawing recipe, the models small enough to embed
    (their layers, float32 weights in base64) and the selftest's images and PyTorch
    probabilities. Empty for colour datasets and those without a `drawing:` recipe (a drawing
    could not be made into one of their images the way pipeline-predict makes it)."""
    recipe = params.drawing.get(section.name)
    shape = list(section.test.images.shape[1:])
    if shape[0] != 1 or recipe is None:
        return {}
    budget = params.report.draw_max_params
    models, left_out = [], []
    for m in section.models:
        layers = m.evaluation.web_layers
        if layers is None or m.summary.params > budget:
            left_out.append(m.name)
            continue
        models.append({"name": m.name, "convolutional": m.evaluation.convolutional,
                       "layers": [_encode_layer(layer) for layer in layers],
                       "selftest": m.evaluation.selftest_probabilities.tolist(),
                       "selftest_saliency": None if m.evaluation.selftest_saliency is None
                       else np.round(m.evaluation.selftest_saliency, 8).tolist()})
    count = len(models[0]["selftest"]) if models else 0
    return {"dataset": section.name, "classes": section.classes, "shape": shape,
            "recipe": recipe.model_dump(), "models": models, "left_out": left_out,
            "budget": budget,
            "selftest_images": base64.b64encode(
                np.ascontiguousarray(section.test.images[:count]).tobytes()).decode("ascii")}


def _encode_layer(layer: dict) -> dict:
    return {key: base64.b64encode(value.astype("<f4").tobytes()).decode("ascii")
            if isinstance(value, np.ndarray) else value for key, value in layer.items()}


AUGMENTED_SHOWN, AUGMENTED_DRAWS = 10, 3  # training images, and augmented versions of each


def augmentation_recipes(section: DatasetSection) -> dict[Augment, list[str]]:
    """Each augmentation recipe the section's models trained with, and who used it (from the
    evaluation records, so a model's recipe is shown as it trained)."""
    recipes: dict[Augment, list[str]] = {}
    for model in section.models:
        recipe = Augment.model_validate((model.evaluation.training or {}).get("augment") or {})
        if recipe.active:
            recipes.setdefault(recipe, []).append(model.name)
    return recipes


def augmented_examples(images: np.ndarray, recipe: Augment) -> dict[str, np.ndarray]:
    """The images as stored, and a few random versions of them (drawn from seed 0). torch is
    imported here only: a report with no augmented model does without it (1-2 s)."""
    import torch

    from pipeline import augment

    generator = torch.Generator().manual_seed(0)
    pixels = torch.from_numpy(images).float() / PIXEL_MAX
    rows = {"stored": images}
    for k in range(AUGMENTED_DRAWS):
        changed = augment.apply(pixels, augment.draw(recipe, len(images), generator))
        rows[f"draw {k + 1}"] = (changed * PIXEL_MAX).round().clamp(0, PIXEL_MAX).to(
            torch.uint8).numpy()
    return rows


def queue_figures(section: DatasetSection, train_split_path: Path, per_class: int,
                  queue: plots.FigureQueue) -> None:
    """Queue the figures of one dataset's section that need no evidence (those follow in
    `queue_evidence_figures`); `queue.draw()` fills them in."""
    train = load_split(train_split_path)
    ds, classes = section.name, plots.literal(section.classes)
    queue.add(section.figures, "samples", plots.sample_grid,
              train.images, train.labels, classes, per_class,
              f"{ds}: training images per class")
    for recipe, models in augmentation_recipes(section).items():
        queue.add(section.figures, f"augmented:{', '.join(models)}", plots.augmented_grid,
                  augmented_examples(train.images[:AUGMENTED_SHOWN], recipe),
                  f"{ds}: {', '.join(models)}'s augmentation, examples (train.augment: "
                  f"{recipe.model_dump_json(exclude_defaults=True)})")
    queue.add(section.figures, "balance", plots.class_balance,
              section.quality["class_counts"], classes,
              f"{ds}: images per class and split")
    queue.add(section.figures, "curves", plots.learning_curves,
              {m.name: m.history for m in section.models}, f"{ds}: learning curves, all models")
    queue.add(section.figures, "params", plots.parameter_bars,
              {m.name: m.summary.params for m in section.models},
              {m.name: m.summary.test_accuracy for m in section.models},
              f"{ds}: parameters per model")
    queue.add(section.figures, "scatter", plots.accuracy_vs_params,
              {m.name: (m.summary.params, m.summary.test_accuracy) for m in section.models},
              section.pareto, f"{ds}: test accuracy vs parameters")
    test = section.test
    queue.add(section.figures, "reliability", plots.reliability_diagrams,
              {m.name: m.evaluation.calibration for m in section.models},
              f"{ds}: reliability (accuracy against confidence, test set)")
    queue.add(section.figures, "class_curves", plots.class_curves,
              {m.name: m.evaluation.class_curves for m in section.models}, classes,
              f"{ds}: one-vs-rest curves per class (test set)")
    for model in section.models:
        title = f"{ds} / {model.name}"
        evaluation = model.evaluation
        probabilities = analysis.softmax(model.logits)
        predicted = probabilities.argmax(1)
        examples = analysis.telling_examples(probabilities, test.labels, PROBABILITY_EXAMPLES)
        queue.add(model.figures, "curves", plots.learning_curves,
                  {model.name: model.history}, f"{title}: train vs valid")
        queue.add(model.figures, "confusion", plots.confusion_matrices,
                  evaluation.confusion, classes, f"{title}: test confusion matrix")
        queue.add(model.figures, "misclassified", plots.misclassified_gallery,
                  test.images, test.labels, predicted, probabilities.max(1), classes,
                  f"{title}: most confidently wrong test images")
        queue.add(model.figures, "probabilities", plots.probability_bars,
                  *(array[examples] for array in (test.images, test.labels, probabilities)),
                  classes,
                  f"{title}: predicted probabilities (green: true, red: wrong guess)")
        if evaluation.filters is not None:
            queue.add(model.figures, "filters", plots.conv_filters,
                      evaluation.filters, f"{title}: first-layer filters")
            queue.add(model.figures, "maps", plots.feature_maps,
                      evaluation.feature_maps, f"{title}: first-layer feature maps of test image 0 "
                      f"({classes[test.labels[0]]})")
        queue.add(model.figures, "weights", plots.weight_histograms,
                  evaluation.weight_histograms,
              f"{title}: weights at initialisation vs after training")


def queue_evidence_figures(section: DatasetSection, queue: plots.FigureQueue) -> None:
    """The figures drawn from `section.evidence` (bootstrap intervals, suspected labels)."""
    ds, found, classes = section.name, section.evidence, plots.literal(section.classes)
    level = _percent(evidence.INTERVAL_LEVEL)
    queue.add(section.figures, "intervals", plots.accuracy_intervals, found["intervals"], level,
              f"{ds}: test accuracy with bootstrap {level} intervals")
    issues = found["label_issues"][:LABEL_ISSUES_SHOWN]
    if issues:
        queue.add(section.figures, "label_issues", plots.label_issue_gallery,
                  section.test.images[[i.index for i in issues]],
                  [classes[i.given] for i in issues],
                  [classes[i.suggested] for i in issues], [i.confidence for i in issues],
                  f"{ds}: test images whose label the models doubt")


def queue_saliency_figures(section: DatasetSection, queue: plots.FigureQueue) -> None:
    """Per model, its saliency gallery: where it looks on its most confidently wrong and its
    least confident right test images (the evaluate stage's maps, pipeline/saliency.py)."""
    classes, images = plots.literal(section.classes), section.test.images
    for model in section.models:
        found = model.evaluation.saliency
        if found is None:
            continue
        probabilities = analysis.softmax(model.logits)
        rows = {}
        offset = 0
        for label, key in (("confidently\nwrong", "wrong"), ("least sure\nright", "unsure")):
            chosen = found[key]
            captions = [f"#{i} {classes[section.test.labels[i]]}→"
                        f"{classes[int(probabilities[i].argmax())]} "
                        f"{100 * probabilities[i].max():.0f}%" for i in chosen]
            rows[label] = (images[chosen], found["maps"][offset : offset + len(chosen)],
                           captions)
            offset += len(chosen)
        if any(len(chosen) for chosen, _, _ in rows.values()):
            method = "occlusion" if found["method"] == "occlusion" else "input gradient x input"
            queue.add(model.figures, "saliency", plots.saliency_gallery, rows,
                      f"{section.name} / {model.name}: where it looks ({method})")


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


def embedding_data(section: DatasetSection, maps: dict[str, dict]) -> dict:
    """The embedding map's data (JSON-ready): the placed images as positions among the images
    the page carries (`section.errors["index"]`), which of them are suspected label errors
    (where claimed), and per model its feature count and PCA and t-SNE coordinates."""
    if not maps:
        return {}
    carried = {index: k for k, index in enumerate(section.errors["index"])}
    placed = next(iter(maps.values()))["index"]
    claimed = not section.evidence.get("label_issue_doubt")
    suspects = {issue.index for issue in section.evidence.get("label_issues", [])} \
        if claimed else set()
    return {
        "points": [carried[int(i)] for i in placed],
        "suspects": [carried[int(i)] for i in placed if int(i) in suspects],
        "placed": len(placed),
        "total": len(section.test.labels),
        "models": [{"name": name, "view": next(k for k, v in enumerate(section.errors["views"])
                                                if v["name"] == name),
                    "features": found["features"], "pca": found["pca"].ravel().tolist(),
                    "tsne": None if found["tsne"] is None else found["tsne"].ravel().tolist()}
                   for name, found in maps.items() if np.array_equal(found["index"], placed)],
    }


def flipped_images(section: DatasetSection, workspace: experiments.Experiment,
                   runs: list[experiments.Experiment],
                   committed: experiments.Experiment) -> list[dict]:
    """Per run (an experiment or the workspace) and model of `section`: the test images it
    fixed and broke against the commit (`experiments.flips`), each list as a strip of
    thumbnails with their numbers, labels and both predictions, suspected label errors marked
    where the models are good enough to claim them; or why the two cannot be paired, or why
    the images cannot be shown (a run tested on another split than this workspace's)."""
    suspects = set() if section.evidence.get("label_issue_doubt") else {
        issue.index for issue in section.evidence.get("label_issues", [])}
    classes = section.classes
    found = []
    for run in runs:
        if run is committed:
            continue
        for model in section.models:
            key = (section.name, model.name)
            if key not in run.accuracy or key not in committed.accuracy:
                continue
            flips = experiments.flips(run, committed, key)
            entry: dict = {"run": run.name, "model": model.name}
            if isinstance(flips, experiments.Flips) and run is not workspace \
                    and not experiments.same_test_split(run, workspace, section.name):
                flips = ("it tested on another split than this run's (the prepared data "
                         "differ), so its images are not shown here; `pipeline-compare "
                         "--flips` lists them by number")
            if not isinstance(flips, experiments.Flips):
                entry["reason"] = flips or "a side has no per-image results"
                found.append(entry)
                continue
            mine, theirs = run.predictions.get(key), committed.predictions.get(key)
            for direction, images in (("fixed", flips.fixed), ("broken", flips.broken)):
                shown = images[:FLIPS_SHOWN]
                entry[direction] = {"count": len(images), "images": [
                    {"index": int(i), "label": classes[section.test.labels[i]],
                     "was": theirs[1][i] if theirs else None,
                     "now": mine[1][i] if mine else None, "suspect": int(i) in suspects}
                    for i in shown],
                    "strip": error_browser.sprite_sheet(section.test.images[shown])
                    if len(shown) else None}
            entry["evidence"] = flips.evidence
            found.append(entry)
    return found


def compare_experiments(sections: list[DatasetSection], params: Params, inputs: Inputs,
                        repo_root: Path) -> dict:
    """The workspace next to the committed baseline and the experiments `dvc exp show` lists,
    each with the parameters it changed from the commit; which runs could not be compared image
    by image, and why; and, when the workspace's results differ from the commit's, whether each
    model reproduced them (pipeline/reproduction.py). `drift` holds the workspace's own
    changes: `dvc exp run` starts from the workspace, so values set by an earlier
    `dvc exp run -S` carry into the next run unless params.yaml is restored."""
    runs = [(s.name, m.name) for s in sections for m in s.models]
    live, evaluation, prepared = (_relative(path, repo_root) for path in
                                  (inputs.live, inputs.evaluation, inputs.prepared))
    found = experiments.list_experiments(repo_root, runs, live, evaluation_dir=evaluation,
                                         prepared_dir=prepared)
    workspace = experiments.read_revision(repo_root, None, "workspace", runs, live, evaluation,
                                          prepared)
    if workspace is None or set(workspace.accuracy) != set(runs):  # not a DVC project
        workspace = experiments.Experiment(
            "workspace", experiments.flatten(params.model_dump(mode="json")),
            {(s.name, m.name): m.summary.test_accuracy for s in sections for m in s.models},
            {(s.name, m.name): m.history for s in sections for m in s.models},
            {(s.name, m.name): m.logits.argmax(1) == s.test.labels
             for s in sections for m in s.models})
    committed = next((e for e in found if e.committed), None)
    reference = committed.params if committed else workspace.params
    # a model an experiment added gets a column; reproduction is judged on this run's models
    columns = experiments.all_runs([workspace, *found], runs)
    rows = experiments.comparison_rows([workspace, *found], committed, columns, reference)
    drift = experiments.drift(workspace, committed) if committed is not None else {}
    figures = {}
    if found:
        for section in sections:
            curves = {m.name: {e.name: e.histories[(section.name, m.name)]
                               for e in [workspace, *found] if (section.name, m.name)
                               in e.histories} for m in section.models}
            figures[section.name] = plots.experiment_overlay(
                curves, f"{section.name}: validation accuracy, workspace vs experiments")
    reproduced = None
    if committed is not None and not reproduction.identical(workspace, committed, runs):
        verdicts = reproduction.compare(workspace, committed, runs, params.verify)
        try:
            commit = f"commit {revisions.commit_of(repo_root, committed.revision)[:7]}"
        except PipelineError:
            commit = committed.name
        reproduced = {"headline": reproduction.headline(verdicts, commit, committed),
                      "verdicts": verdicts}
    flipped = {section.name: flipped_images(section, workspace, [workspace, *found], committed)
               for section in sections} if committed is not None else {}
    return {"runs": columns, "rows": rows, "figures": figures, "count": len(found),
            "flips": flipped, "flips_shown": FLIPS_SHOWN,
            "committed": committed.name if committed else None,
            "baseline": committed.revision if committed else None, "drift": drift,
            "missing": experiments.missing_comparisons([workspace, *found]),
            "reproduced": reproduced,
            "other_commits": revisions.experiments_of_other_commits(repo_root)}


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["param"] = experiments.param_text
    environment.filters["percent"] = _percent
    environment.globals["method"] = evidence.METHOD
    environment.filters["code"] = _code_spans
    return environment


def _percent(share: float) -> str:
    """0.95 -> "95 %", 0.999 -> "99.9 %"."""
    return f"{100 * share:g} %"


def _code_spans(text: str) -> markupsafe.Markup:
    """Plain text with `commands` in backticks, escaped, the commands set in <code>."""
    parts = str(markupsafe.escape(text)).split("`")
    return markupsafe.Markup("".join(f"<code>{part}</code>" if index % 2 else part
                                     for index, part in enumerate(parts)))


def render(sections: list[DatasetSection], environment: dict, run_script: str,
           sweeps: dict[str, list[SweepSection]] | None = None) -> str:
    return _environment().get_template("report.html.j2").render(
        sections=sections, environment=environment, run_script=run_script,
        label_issues_shown=LABEL_ISSUES_SHOWN, sweeps=sweeps or {})


def used_params(params: Params) -> dict:
    """The parameters as the run used them: every section, but of the datasets, models and
    drawing recipes only those `run:` names (params.yaml may define many more)."""
    used = params.model_dump(mode="json", exclude_none=True)
    for key, ran in (("datasets", params.run.datasets), ("models", params.run.models),
                     ("drawing", params.run.datasets)):
        used[key] = {name: value for name, value in used.get(key, {}).items() if name in ran}
    return used


def run_fragments(sections: list[DatasetSection], params: Params,
                  comparison: dict) -> dict[str, str]:
    """The page's slots that change from run to run, as HTML fragments keyed by slot name.
    The parameters the run used are one of them: the page itself depends only on `run` and
    `report` (and on the files the other settings produced)."""
    escape = markupsafe.escape
    params_yaml = yaml.safe_dump(used_params(params), sort_keys=False, width=100)
    fragments = {
        "generated": str(escape(dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))),
        "params": ('<p class="muted">Every section of params.yaml, but of the datasets, models '
                   "and drawing recipes only those <code>run:</code> names.</p>"
                   f"<pre>{escape(params_yaml)}</pre>"),
        "experiments": _environment().get_template("experiments.html.j2").render(
            comparison=comparison),
        "drift": _environment().get_template("drift.html.j2").render(comparison=comparison),
        **{f"flips:{section.name}": _environment().get_template("flips.html.j2").render(
            comparison=comparison, dataset=section.name,
            tile=section.test.images.shape[2:]) for section in sections},
        "reproduction": _environment().get_template("reproduction.html.j2").render(
            comparison=comparison),
    }
    devices = set()
    for section in sections:
        for model in section.models:
            timing = model.timing
            if timing is None:
                continue
            key = f"{section.name}/{model.name}"
            fragments[f"seconds:{key}"] = f"{timing.train_seconds:.1f} s"
            fragments[f"rate:{key}"] = f"{timing.samples_per_second:,.0f}"
            fragments[f"device:{key}"] = str(escape(timing.device))
            devices.add(timing.device)
    if devices:
        fragments["devices"] = str(escape(", ".join(sorted(devices))))
    for section in sections:
        fragments.update(time_to_accuracy_fragments(section))
    return fragments


def time_to_accuracy_fragments(section: DatasetSection) -> dict[str, str]:
    """The training seconds to each share of the best validation accuracy, and validation
    accuracy against training time: timings differ between runs, so they fill slots."""
    fragments, curves = {}, {}
    for model in section.models:
        if model.timing is None:
            continue
        seconds = model.timing.epoch_seconds
        accuracy = [r.valid_accuracy for r in model.history]
        for milestone in evidence.time_to_accuracy(accuracy, seconds):
            if milestone.seconds is not None:
                fragments[f"tta:{section.name}/{model.name}/{milestone.fraction:g}"] = \
                    f"{milestone.seconds:.2f} s"
        curves[model.name] = (np.cumsum(seconds).tolist()[: len(accuracy)],
                              accuracy[: len(seconds)])
    if curves:
        title = f"{section.name}: validation accuracy against training time"
        figure = plots.accuracy_over_time(curves, title)
        fragments[f"tta-plot:{section.name}"] = f'<img src="{figure}" alt="{title}">'
    return fragments


def build_report(params: Params, inputs: Inputs, out: Path, run_script: Path,
                 repo_root: Path) -> list[DatasetSection]:
    sections = []
    with plots.FigureQueue() as queue:
        # the figures are drawn in other processes from the moment they are queued, while
        # this one works out the evidence and the experiments (the figures needing neither
        # first)
        for name in params.run.datasets:
            section = collect_dataset(name, params, inputs)
            queue_figures(section, inputs.prepared / name / split_file("train"),
                          params.report.samples_per_class, queue)
            sections.append(section)
        sweeps = collect_sweeps(inputs.sweeps, queue)
        for section in sections:
            section.evidence = dataset_evidence(section.models, section.test.labels)
            maps = {m.name: m.evaluation.embedding for m in section.models
                    if m.evaluation.embedding is not None}
            section.errors, section.figures["sprite"] = error_browser.browser_data(
                error_browser.views({m.name: m.logits for m in section.models},
                                    {m.name: m.evaluation.logits for m in section.models}),
                section.test.labels, section.test.images, section.evidence["label_quality"],
                ERROR_IMAGES_PER_LIST,
                also=next(iter(maps.values()))["index"] if maps else None)
            section.errors["classes"] = section.classes
            section.errors["embedding"] = embedding_data(section, maps)
            queue_evidence_figures(section, queue)
            queue_saliency_figures(section, queue)
        comparison = compare_experiments(sections, params, inputs, repo_root)
        fragments = run_fragments(sections, params, comparison)
        fragments["commit"] = str(markupsafe.escape(git_commit(repo_root)))
        environment = {
            "packages": package_versions(),
            "platform": f"{platform.system()} {platform.machine()}",
        }
        with phase("figures"):
            queue.draw()
    script_src = Path(os.path.relpath(run_script.resolve(), out.resolve().parent)).as_posix()
    html = render(sections, environment, script_src, sweeps)
    with atomic_write(run_script, "w") as handle:
        handle.write("// Written by the report stage: what differs between runs and machines.\n"
                     f"window.REPORT_RUN = {json.dumps(fragments, indent=1)};\n")
    with atomic_write(out, "w") as handle:
        handle.write(html)
    return sections
