"""Speed and scale, side by side in one run: `python -m benchmarks.run` (or `make bench`).

1. ingest: a 60,000-row Fashion-MNIST-shaped CSV into uint8 arrays, the pipeline's reader vs
   `pandas.read_csv` with its defaults, each in a fresh process (wall time and peak RSS);
2. training: `cnn` and `linearnet` for the same epochs on the same 48,000/12,000 split, the
   pipeline's loop (settings from params.yaml) vs a faithful copy of the tutorials' loop
   (benchmarks/tutorial.py): seconds per epoch, samples/s, and held-out accuracy at the end;
3. scaling: ingest and one training epoch at 6k, 20k and 60k rows (time per row should be flat);
4. end to end: `dvc repro` of the default pipeline in a fresh copy of the repository.

Writes benchmarks/results/<device>.json and .md and prints the table. Runs on CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import tutorial
from benchmarks.synthetic import write_csv
from pipeline.engine import Training, native_bf16, select_device
from pipeline.ingest import CsvLayout, read_image_csv
from pipeline.params import load_params
from pipeline.splits import Split, stratified_split

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = CsvLayout(num_pixels=784, num_classes=10, header=True, label_column="label")
CLASSES = [str(i) for i in range(10)]
GOALS = {"ingest": 1.5, "cnn": 4.0, "linearnet": 10.0}
CHUNK_BUDGET_MB = 64

INGEST_CHILD = """
import json, sys, time, zlib
import numpy as np, pandas as pd
from pipeline.ingest import CsvLayout, read_image_csv

def status_mb(key):  # VmRSS now, VmHWM the peak since the last reset (Linux)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(key))

path, reader = sys.argv[1], sys.argv[2]
with open("/proc/self/clear_refs", "w") as reset:  # start the peak from here, not from imports
    reset.write("5")
before = status_mb("VmRSS")
started = time.perf_counter()
if reader == "pipeline":
    table = read_image_csv(path, CsvLayout(784, 10, True, "label"))
    labels, images = table.labels, table.images
else:
    values = pd.read_csv(path).to_numpy()
    labels, images = values[:, 0], values[:, 1:]
seconds = time.perf_counter() - started
peak = status_mb("VmHWM") - before
digest = zlib.crc32(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
print(json.dumps({"seconds": seconds, "peak_mb": peak, "rows": len(labels), "digest": digest}))
"""


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 4) for v in values]}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    device = select_device("auto")
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "bf16": native_bf16(device),
    }


# --- 1. ingest ----------------------------------------------------------------------------------

def bench_ingest(csv: Path, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {"pipeline": [], "pandas": []}
    for _ in range(repeats):
        for reader in runs:  # alternate, so drift in the machine hits both alike
            out = subprocess.run([sys.executable, "-c", INGEST_CHILD, str(csv), reader],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            runs[reader].append(json.loads(out.stdout))
    digests = {run["digest"] for reader in runs.values() for run in reader}
    if len(digests) != 1:
        raise SystemExit("the pipeline's reader and pandas disagree on the pixel values")
    rows = runs["pipeline"][0]["rows"]
    arrays_mb = rows * (784 + 8) / 2**20
    result = {reader: {"seconds": spread([r["seconds"] for r in rs]),
                       "peak_mb": spread([r["peak_mb"] for r in rs])}
              for reader, rs in runs.items()}
    result.update(
        rows=rows, csv_mb=csv.stat().st_size / 2**20, arrays_mb=arrays_mb,
        memory_limit_mb=1.3 * arrays_mb + CHUNK_BUDGET_MB,
        speedup=result["pandas"]["seconds"]["median"] / result["pipeline"]["seconds"]["median"],
    )
    return result


# --- 2. training --------------------------------------------------------------------------------

def load_splits(csv: Path) -> tuple[Split, Split]:
    table = read_image_csv(csv, LAYOUT)
    images = table.images.reshape(-1, 1, 28, 28)
    train_x, train_y, held_x, held_y = stratified_split(images, table.labels, 0.2, 42, "held-out")
    return Split(train_x, train_y, CLASSES), Split(held_x, held_y, CLASSES)


class TutorialRun:
    """The tutorial loop's state for one model, stepped an epoch at a time."""

    def __init__(self, model_name: str, train: Split, held: Split, device: torch.device,
                 params, seed: int):
        torch.manual_seed(seed)
        architecture = params.model(model_name).architecture()
        self.device = device
        self.model = architecture.build((1, 28, 28), 10).to(device)
        shape = (1, 28, 28) if architecture.convolutional else None
        flat = (train.images.reshape(len(train.labels), -1), train.labels)
        held_flat = (held.images.reshape(len(held.labels), -1), held.labels)
        self.train_loader, self.held_loader = tutorial.make_loaders(flat, held_flat, shape, seed)
        self.optimizer = tutorial.make_optimizer(self.model)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def run_epoch(self) -> float:
        return tutorial.train_epoch(self.model, self.train_loader, self.optimizer, self.loss_fn,
                                    self.device)[0]

    def accuracy(self) -> float:
        return tutorial.accuracy(self.model, self.held_loader, self.device)


def pipeline_training(model_name: str, train: Split, held: Split, epochs: int,
                      device: torch.device, params, seed: int) -> Training:
    """The pipeline's own loop with params.yaml's settings for this model, for `epochs`."""
    settings = params.training_for(model_name).model_copy(update={"epochs": epochs})
    splits = {"train": train, "valid": held, "test": held}
    return Training(params.model(model_name).architecture(), settings, splits, device, seed,
                    params.train.amp, params.train.channels_last)


def timed_epoch(training: Training) -> float:
    training.run_epoch()
    return training.epoch_seconds[-1]


def bench_training(train: Split, held: Split, epochs: int, device: torch.device, params,
                   seed: int) -> dict:
    """Both loops for the same epochs, their epochs interleaved (and the order alternated) so
    that a machine slowing down or speeding up affects both alike."""
    results = {}
    for model_name in ("cnn", "linearnet"):
        ours = pipeline_training(model_name, train, held, epochs, device, params, seed)
        theirs = TutorialRun(model_name, train, held, device, params, seed)
        our_seconds, their_seconds = [], []
        for epoch in range(epochs):
            if epoch % 2:
                our_seconds.append(timed_epoch(ours))
                their_seconds.append(theirs.run_epoch())
            else:
                their_seconds.append(theirs.run_epoch())
                our_seconds.append(timed_epoch(ours))
        entry = {
            "pipeline": {"epoch_seconds": spread(our_seconds),
                         "batch_size": ours.settings.batch_size, "lr": ours.settings.lr,
                         "schedule": ours.settings.schedule,
                         "accuracy": ours.history[-1].valid_accuracy},
            "tutorial": {"epoch_seconds": spread(their_seconds), "batch_size": 32, "lr": 0.001,
                         "schedule": "constant", "accuracy": theirs.accuracy()},
            "epochs": epochs, "train_rows": len(train.labels),
        }
        for run in (entry["pipeline"], entry["tutorial"]):
            run["samples_per_second"] = len(train.labels) / run["epoch_seconds"]["median"]
        entry["speedup"] = (entry["tutorial"]["epoch_seconds"]["median"]
                            / entry["pipeline"]["epoch_seconds"]["median"])
        entry["accuracy_gain"] = entry["pipeline"]["accuracy"] - entry["tutorial"]["accuracy"]
        results[model_name] = entry
    return results


# --- 3. scaling ---------------------------------------------------------------------------------

def bench_scaling(workdir: Path, row_counts: list[int], device: torch.device, params,
                  seed: int) -> list[dict]:
    rows_out = []
    for rows in row_counts:
        csv = write_csv(workdir / f"scale-{rows}.csv", rows, seed=1)
        ingest = statistics.median(_timed(read_image_csv, csv, LAYOUT) for _ in range(3))
        train, held = load_splits(csv)
        entry = {"rows": rows, "ingest_seconds": ingest, "ingest_us_per_row": 1e6 * ingest / rows}
        for model_name in ("cnn", "linearnet"):
            epoch = timed_epoch(pipeline_training(model_name, train, held, 1, device, params,
                                                  seed))
            entry[f"{model_name}_epoch_seconds"] = epoch
            entry[f"{model_name}_us_per_row"] = 1e6 * epoch / len(train.labels)
        rows_out.append(entry)
        csv.unlink()
    return rows_out


def _timed(action, *args) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


# --- 4. dvc repro -------------------------------------------------------------------------------

def bench_dvc_repro(workdir: Path) -> dict:
    repo = workdir / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    started = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q"], cwd=repo, env=env, check=True, capture_output=True)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q"], cwd=repo, env=env, check=True, capture_output=True)
    return {"seconds": cold, "noop_seconds": time.perf_counter() - started,
            "datasets": load_params(repo / "params.yaml").run.datasets}


# --- report -------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    m, ing, tr = results["machine"], results["ingest"], results["training"]
    lines = [
        f"Benchmark of {results['date']} on {m['device_name']} ({m['cores']} cores, "
        f"torch {m['torch']}, device {m['device']}, bf16 {'on' if m['bf16'] else 'off'}); "
        f"`{results['command']}`, medians of {results['repeats']} runs [min-max].",
        "",
        "| what | pipeline | baseline | ratio | goal |",
        "|---|---|---|---|---|",
    ]

    def secs(entry: dict) -> str:
        return f"{entry['median']:.2f} s [{entry['min']:.2f}-{entry['max']:.2f}]"

    lines.append(
        f"| ingest {ing['rows']:,} rows ({ing['csv_mb']:.0f} MB CSV) vs `pandas.read_csv` | "
        f"{secs(ing['pipeline']['seconds'])} | {secs(ing['pandas']['seconds'])} | "
        f"**{ing['speedup']:.1f}x** | >= {GOALS['ingest']}x |")
    ours_mb, pandas_mb = (ing[reader]["peak_mb"]["median"] for reader in ("pipeline", "pandas"))
    lines.append(
        f"| ingest peak memory (final arrays {ing['arrays_mb']:.0f} MB) | {ours_mb:.0f} MB | "
        f"{pandas_mb:.0f} MB | {pandas_mb / max(ours_mb, 1):.1f}x less | "
        f"<= {ing['memory_limit_mb']:.0f} MB |")
    for name, entry in tr.items():
        ours, theirs = entry["pipeline"], entry["tutorial"]
        lines.append(
            f"| `{name}` epoch, {entry['train_rows']:,} images, batch {ours['batch_size']} vs 32 | "
            f"{secs(ours['epoch_seconds'])} | {secs(theirs['epoch_seconds'])} | "
            f"**{entry['speedup']:.1f}x** | >= {GOALS[name]}x |")
        lines.append(
            f"| `{name}` held-out accuracy after {entry['epochs']} epoch(s) | "
            f"{ours['accuracy']:.2%} | {theirs['accuracy']:.2%} | "
            f"{entry['accuracy_gain'] * 100:+.2f} pts | >= +0 |")
    if "dvc_repro" in results:
        repro = results["dvc_repro"]
        lines.append(f"| `dvc repro` ({', '.join(repro['datasets'])}), fresh copy | "
                     f"{repro['seconds']:.1f} s, no-op rerun {repro['noop_seconds']:.1f} s | | | |")
    lines += ["", "| rows | ingest | us/row | cnn epoch | us/row | linearnet epoch | us/row |",
              "|---|---|---|---|---|---|---|"]
    for row in results["scaling"]:
        lines.append(
            f"| {row['rows']:,} | {row['ingest_seconds']:.3f} s | {row['ingest_us_per_row']:.1f} | "
            f"{row['cnn_epoch_seconds']:.2f} s | {row['cnn_us_per_row']:.1f} | "
            f"{row['linearnet_epoch_seconds']:.2f} s | {row['linearnet_us_per_row']:.1f} |")
    lines += ["", "Goals: " + ", ".join(
        f"{name} {'met' if ok else 'NOT met'}" for name, ok in results["goals"].items())]
    return "\n".join(lines) + "\n"


def check_goals(results: dict) -> dict[str, bool]:
    ing, tr = results["ingest"], results["training"]
    goals = {
        "ingest speed": ing["speedup"] >= GOALS["ingest"],
        "ingest memory": ing["pipeline"]["peak_mb"]["max"] <= ing["memory_limit_mb"],
    }
    for name, entry in tr.items():
        goals[f"{name} speed"] = entry["speedup"] >= GOALS[name]
        goals[f"{name} accuracy"] = entry["accuracy_gain"] >= 0
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per loop")
    parser.add_argument("--repeats", type=int, default=5, help="ingest runs per reader")
    parser.add_argument("--scaling", default="6000,20000,60000", help="row counts")
    parser.add_argument("--skip-dvc", action="store_true", help="leave out the dvc repro timing")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device = select_device(params.train.device)
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    seed = params.train.seed
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python -m benchmarks.run",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "repeats": args.repeats,
    }
    print(f"machine: {results['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        workdir = Path(scratch)
        csv = write_csv(workdir / "fashion-shaped.csv", args.rows)
        print(f"ingest: {args.rows:,} rows, {args.repeats} runs per reader", flush=True)
        results["ingest"] = bench_ingest(csv, args.repeats)
        train, held = load_splits(csv)
        csv.unlink()
        print(f"training: cnn and linearnet, {args.epochs} epochs per loop", flush=True)
        results["training"] = bench_training(train, held, args.epochs, device, params, seed)
        print("scaling", flush=True)
        results["scaling"] = bench_scaling(
            workdir, [int(n) for n in args.scaling.split(",")], device, params, seed)
        if not args.skip_dvc:
            print("dvc repro", flush=True)
            (workdir / "repo").mkdir()
            results["dvc_repro"] = bench_dvc_repro(workdir)
    results["goals"] = check_goals(results)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / results["machine"]["device"]
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    stem.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if all(results["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
