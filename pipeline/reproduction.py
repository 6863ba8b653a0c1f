"""Did a result reproduce? This workspace's models against a revision's, with a margin.

Bit-identical results only come from the same machine and software. Elsewhere (another CPU's
vector units, AMX or not, a GPU, another torch, another thread count) the sums run in another
order and training drifts by about what another seed gives. So "reproduced" is a statistical
claim, tested per dataset x model with the strongest evidence both sides have:

1. `evaluation records`: both evaluation records (DVC outputs, where the cache has them),
   on the same prepared test images: which test images each model got right;
2. `dvclive predictions`: the same from dvclive's confusion files, which git always has: the
   (actual, predicted) class of every test image, in test order;
3. `seed means`: both runs' mean test accuracy over their seed copies (metrics.json), when the
   model trains several seeds: a Welch interval from the seed-to-seed spread;
4. `accuracies`: the two test accuracies alone, as independent binomial estimates.

With per-image evidence (1, 2) the interval of the accuracy difference is a paired bootstrap
over the test images; then two one-sided tests (TOST) against the margin:

- reproduced: the 90 % interval lies inside (-margin, +margin) (equivalence at p < 0.05);
- differs: the 95 % interval lies wholly outside [-margin, +margin] (the difference is
  significantly larger than the margin);
- inconclusive: neither; the test set is too small to tell, and the verdict says about how many
  test images (or seeds) would settle it at the observed disagreement.

The margin is `verify.margin` accuracy points, widened for a model the reference trained with
several seeds to cover `verify.seed_coverage` of the differences between two of its seeds: two
seeds differ by a normal N(0, 2 s^2) for a seed spread s, and another machine moves a model
about as much as another seed does (README, Reproducibility).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import norm, t

from pipeline.evidence import ALPHA, BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED
from pipeline.experiments import Experiment, Run, changed_params, paired_correct, param_text
from pipeline.machine import describe, differences
from pipeline.params import VerifyParams

REPRODUCED, DIFFERS, INCONCLUSIVE = "reproduced", "differs", "inconclusive"
VERDICTS = (REPRODUCED, DIFFERS, INCONCLUSIVE)


@dataclass
class Verdict:
    dataset: str
    model: str
    verdict: str
    evidence: str        # which of the module docstring's four kinds decided it
    difference: float    # this run minus the reference, in accuracy points
    low: float           # the interval the verdict used (90 % when reproduced, else 95 %)
    high: float
    level: float
    margin: float        # accuracy points
    reason: str          # one line: the figures, and what differs between the two runs
    settle: str | None = None  # inconclusive: what would settle it
    made_on: list[str] = field(default_factory=list)  # how the two machines differ

    def as_dict(self) -> dict:
        """Plain values for JSON: no figure (nothing to compare) is null, not NaN."""
        return {key: None if isinstance(value, float) and math.isnan(value) else value
                for key, value in asdict(self).items()}


def _interval_verdict(low90: float, high90: float, low95: float, high95: float,
                      margin: float) -> str:
    if -margin < low90 and high90 < margin:
        return REPRODUCED
    if low95 > margin or high95 < -margin:
        return DIFFERS
    return INCONCLUSIVE


def paired_interval(ours: np.ndarray, theirs: np.ndarray, level: float,
                    samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
                    ) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(ours) - mean(theirs) over the same images (0/1
    vectors). Resampling images only moves the counts of the images one side alone got right,
    so each resample is a multinomial draw of those counts: exact, and light on memory."""
    ours, theirs = np.asarray(ours, bool), np.asarray(theirs, bool)
    n = ours.size
    only_ours, only_theirs = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    if n == 0:
        return math.nan, math.nan
    if only_ours + only_theirs == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [only_ours / n, only_theirs / n,
                                 (n - only_ours - only_theirs) / n], size=samples)
    differences = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def seed_margin(spread: float | None, settings: VerifyParams) -> float:
    """Accuracy points covering `seed_coverage` of the differences between two seeds."""
    if not spread or settings.seed_coverage <= 0:
        return 0.0
    return float(norm.ppf((1 + settings.seed_coverage) / 2) * math.sqrt(2) * spread)


def _needed(per_unit_sd: float, difference: float, margin: float) -> int | None:
    """How many units (images, seeds) make the verdict's interval narrow enough at this
    spread: inside the margin when the difference is, else clear of it."""
    gap = abs(abs(difference) - margin)
    if gap == 0 or per_unit_sd == 0:
        return None
    z = norm.ppf(1 - ALPHA) if abs(difference) < margin else norm.ppf(1 - ALPHA / 2)
    return math.ceil((z * per_unit_sd / gap) ** 2)


def _paired(ours: np.ndarray, theirs: np.ndarray, margin: float) -> dict:
    n = ours.size
    difference = float(ours.mean() - theirs.mean())
    low90, high90 = paired_interval(ours, theirs, 1 - 2 * ALPHA)
    low95, high95 = paired_interval(ours, theirs, 1 - ALPHA)
    verdict = _interval_verdict(low90, high90, low95, high95, margin)
    disagree = int(np.sum(ours != theirs))
    figures = (f"{disagree:,} of {n:,} test images judged differently" if disagree
               else f"the same {n:,} test images right")
    settle = None
    if verdict == INCONCLUSIVE:
        spread = math.sqrt(max(disagree / n - difference**2, 0.0))
        needed = _needed(spread, difference, margin)
        settle = (f"about {needed:,} test images would settle it" if needed
                  else "the difference sits on the margin")
    return {"verdict": verdict, "difference": difference, "figures": figures, "settle": settle,
            "interval": (low90, high90, 0.90) if verdict == REPRODUCED else (low95, high95, 0.95)}


def _normal(difference: float, se: float, margin: float) -> dict:
    z90, z95 = norm.ppf(1 - ALPHA), norm.ppf(1 - ALPHA / 2)
    verdict = _interval_verdict(difference - z90 * se, difference + z90 * se,
                                difference - z95 * se, difference + z95 * se, margin)
    z = z90 if verdict == REPRODUCED else z95
    return {"verdict": verdict, "difference": difference,
            "interval": (difference - z * se, difference + z * se,
                         0.90 if verdict == REPRODUCED else 0.95)}


def _welch(mean_a: float, sd_a: float, k_a: int, mean_b: float, sd_b: float, k_b: int,
           margin: float) -> dict:
    se2 = sd_a**2 / k_a + sd_b**2 / k_b
    difference = mean_a - mean_b
    if se2 == 0:
        return _normal(difference, 0.0, margin)
    dof = se2**2 / ((sd_a**2 / k_a) ** 2 / max(k_a - 1, 1) + (sd_b**2 / k_b) ** 2 / max(k_b - 1, 1))
    se = math.sqrt(se2)
    t90, t95 = t.ppf(1 - ALPHA, dof), t.ppf(1 - ALPHA / 2, dof)
    verdict = _interval_verdict(difference - t90 * se, difference + t90 * se,
                                difference - t95 * se, difference + t95 * se, margin)
    q = t90 if verdict == REPRODUCED else t95
    found = {"verdict": verdict, "difference": difference,
             "interval": (difference - q * se, difference + q * se,
                          0.90 if verdict == REPRODUCED else 0.95)}
    if verdict == INCONCLUSIVE:
        pooled = math.sqrt((sd_a**2 + sd_b**2) / 2)
        needed = _needed(pooled * math.sqrt(2), difference, margin)
        found["settle"] = (f"about {needed:,} seeds per run would settle it" if needed
                           else "the difference sits on the margin")
    return found


def compare_run(ours: Experiment, theirs: Experiment, run: Run, settings: VerifyParams,
                relevant_changes: dict[str, tuple[object, object]]) -> Verdict:
    """The verdict for one dataset x model, from the strongest evidence both runs have."""
    dataset, model = run
    summary_a, summary_b = ours.summaries.get(run), theirs.summaries.get(run)
    # the reference's own seed spread: a run that went wrong (too few epochs) often spreads
    # widely, and must not widen the margin it is judged by
    spread = summary_b.seeds.test_accuracy_std if summary_b is not None \
        and summary_b.seeds is not None and summary_b.seeds.count > 1 else None
    from_seeds = seed_margin(spread, settings)  # as a fraction, like the accuracies
    margin = max(settings.margin / 100, from_seeds)
    notes: list[str] = []
    found: dict | None = None
    evidence = ""
    paired = paired_correct(ours, theirs, run)
    if isinstance(paired, tuple):
        mine, other, evidence = paired
        found = _paired(mine, other, margin)
    elif paired is not None:
        notes.append(paired)
    if found is None and summary_a is not None and summary_b is not None:
        if summary_a.seeds is not None and summary_b.seeds is not None \
                and summary_a.seeds.count > 1 and summary_b.seeds.count > 1:
            a, b = summary_a.seeds, summary_b.seeds
            evidence = f"seed means ({a.count} vs {b.count} seeds)"
            found = _welch(a.test_accuracy_mean, a.test_accuracy_std, a.count,
                           b.test_accuracy_mean, b.test_accuracy_std, b.count, margin)
        else:
            n = next((len(p[0]) for p in (ours.predictions.get(run), theirs.predictions.get(run))
                      if p), None)
            if n:
                acc_a, acc_b = summary_a.test_accuracy, summary_b.test_accuracy
                se = math.sqrt((acc_a * (1 - acc_a) + acc_b * (1 - acc_b)) / n)
                evidence, found = "accuracies", _normal(acc_a - acc_b, se, margin)
                if found["verdict"] == INCONCLUSIVE:
                    needed = _needed(se * math.sqrt(n), acc_a - acc_b, margin)
                    found["settle"] = (f"about {needed:,} test images would settle it"
                                       if needed else "the difference sits on the margin")
    machine_changes = differences(ours.made_on.get(run), theirs.made_on.get(run))
    if found is None:
        return Verdict(dataset, model, INCONCLUSIVE, "none", math.nan, math.nan, math.nan,
                       math.nan, 100 * margin,
                       "no result to compare: " + ("; ".join(notes) or "a side has no metrics"),
                       "re-run both, or compare revisions that have results", machine_changes)
    low, high, level = found["interval"]
    points = 100 * found["difference"]
    text = (f"{points:+.2f} pts [{100 * low:+.2f}, {100 * high:+.2f}] ({level:.0%}) against "
            f"±{100 * margin:.2f}")
    if spread is not None and from_seeds > settings.margin / 100:
        text += f" (seed spread {100 * spread:.2f} pts)"
    if "figures" in found:
        text += f"; {found['figures']}"
    if found.get("settle"):
        text += f"; {found['settle']}"
    if relevant_changes:
        text += "; params differ: " + ", ".join(
            f"{key} {_short(old)} → {_short(new)}" for key, (old, new) in relevant_changes.items())
    if machine_changes:
        text += "; made differently: " + ", ".join(machine_changes)
    text += "".join(f"; {note}" for note in notes)
    return Verdict(dataset, model, found["verdict"], evidence, points, 100 * low, 100 * high,
                   level, 100 * margin, text, found.get("settle"), machine_changes)


def _short(value: object, limit: int = 40) -> str:
    text = param_text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def relevant_params(ours: Experiment, theirs: Experiment, run: Run
                    ) -> dict[str, tuple[object, object]]:
    """The experiment parameters that differ and bear on one run: its dataset, its model, the
    shared training and preparation settings (execution settings are like another machine)."""
    dataset, model = run
    prefixes = (f"datasets.{dataset}", f"models.{model}", "train.", "prepare.")
    changed = changed_params(ours, theirs.params)
    return {key: (theirs.params.get(key, "not defined"), value)
            for key, value in changed.items()
            if key.startswith(prefixes)}


def compare(ours: Experiment, theirs: Experiment, runs: list[Run], settings: VerifyParams
            ) -> list[Verdict]:
    return [compare_run(ours, theirs, run, settings, relevant_params(ours, theirs, run))
            for run in runs]


def identical(ours: Experiment, theirs: Experiment, runs: list[Run]) -> bool:
    """Whether every run's recorded results are the same (accuracies, per-image predictions)."""
    return all(ours.summaries.get(r) == theirs.summaries.get(r)
               and ours.predictions.get(r) == theirs.predictions.get(r) for r in runs)


def headline(verdicts: list[Verdict], reference: str, theirs: Experiment) -> str:
    """One line for the report's first screen: `This run vs commit abc123 (made on ...): 4 of 5
    models reproduced within ±1 pt; cnn inconclusive (...)`."""
    machines = {describe(m) for m in theirs.made_on.values()}
    made = f" (made on {'; '.join(sorted(machines))})" if machines else ""
    count = sum(v.verdict == REPRODUCED for v in verdicts)
    margins = sorted({round(v.margin, 2) for v in verdicts if not math.isnan(v.margin)})
    within = f"±{margins[0]:g} pt" if len(margins) == 1 else "their margins"
    line = f"This run vs {reference}{made}: {count} of {len(verdicts)} models reproduced " \
           f"within {within}"
    others = [v for v in verdicts if v.verdict != REPRODUCED]
    if others:
        line += "; " + ", ".join(f"{v.dataset}/{v.model} {v.verdict}" for v in others)
    return line
