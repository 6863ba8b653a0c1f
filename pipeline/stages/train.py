"""Stage train: train one model on one dataset, keep the best-validation weights, test them.

With `seeds: N` on a model, N copies are trained from seeds train.seed, train.seed+1, ...; the
first is the model, the others make its seed ensemble (mean of logits), kept in the checkpoint.
Writes the checkpoint (pipeline/checkpoint.py), logs through dvclive (pipeline/tracking.py), and
TensorBoard event logs too when `execution.tensorboard` is on. The run's timings go to a separate
timing file, so the checkpoint and the committed metrics are the same bytes on every re-run on
this machine with the same thread count.
With `execution.processes: N` (or several machines, see pipeline/distributed.py) the stage runs
itself under torchrun and only global rank 0 writes.
"""

from __future__ import annotations

import gc

if __name__ == "__main__":  # DVC's process: no collections while importing (see run_stage)
    gc.disable()

import argparse
import contextlib
import platform
import sys
from pathlib import Path

import torch

from pipeline import machine
from pipeline.artifacts import fresh_directory
from pipeline.checkpoint import Checkpoint
from pipeline.cli import run_stage
from pipeline.cores import threads_for
from pipeline.distributed import (
    World,
    check_devices,
    close_worker,
    current_world,
    init_worker,
    launcher_arguments,
    peers_lost_as_errors,
    run_workers,
)
from pipeline.engine import TrainResult, fit, native_bf16, select_device, summarise
from pipeline.layout import split_file
from pipeline.models import build, count_params
from pipeline.params import Params, load_params
from pipeline.resume import ResumeStore, agreed_state, code_files, inputs_key
from pipeline.splits import SPLITS, load_split
from pipeline.tracking import (
    RunTracker,
    Timing,
    describe_tensorboard_folder,
    write_machine,
    write_timing,
)
from pipeline.trial import STORAGE_ENV, open_trial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, type=Path, help="data/prepared/<dataset>")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--live", required=True, type=Path,
                        help="folder for dvclive's metrics.json and plots")
    parser.add_argument("--tensorboard", required=True, type=Path,
                        help="folder for TensorBoard event logs (only a README unless "
                             "execution.tensorboard is on)")
    parser.add_argument("--timing", required=True, type=Path,
                        help="file for the run's timings (kept out of DVC's hashes)")
    parser.add_argument("--state", type=Path,
                        help="folder for the saved training state a killed run resumes from "
                             "(not a DVC output; removed once the outputs are written); "
                             "without it, a killed run starts again from epoch 1")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    params.dataset(args.dataset)
    params.model(args.model)
    world = current_world()
    execution = params.execution
    device = select_device(execution.device)
    if not world.distributed:
        launcher = launcher_arguments(execution.processes)
        if launcher:  # this process only launches the workers and waits for them
            check_devices(device, execution.processes)
            run_workers(launcher, __spec__.name, sys.argv[1:] if argv is None else argv,
                        execution.processes)
            return
    if world.distributed:
        device = init_worker(world, device)
    try:
        with peers_lost_as_errors(world):
            train(args, params, device, world)
    finally:
        close_worker(world)


def train(args: argparse.Namespace, params: Params, device: torch.device, world: World) -> None:
    spec = params.model(args.model)
    architecture = spec.architecture()
    train_params, execution = params.train, params.execution
    settings = params.training_for(args.model)
    if execution.threads != "auto" or not world.distributed:  # else the launcher gave each
        torch.set_num_threads(threads_for(execution.threads))  # worker its share of the cores
    say = print if world.main else (lambda *_: None)

    splits = {name: load_split(args.data / split_file(name)) for name in SPLITS}
    classes = splits["train"].classes
    input_shape = tuple(splits["train"].images.shape[1:])
    n_params = count_params(build(architecture, input_shape, len(classes)))
    bf16 = train_params.amp and native_bf16(device)
    channels_last = train_params.channels_last and architecture.convolutional
    seeds = [train_params.seed + k for k in range(spec.seeds)]
    workers = (f" x {world.size} processes" + (f" on {world.size // execution.processes} "
               "machines" if world.size > execution.processes else "")
               if world.distributed else "")
    say(f"{args.dataset}/{args.model}: {architecture.arch}, {n_params:,} parameters, on "
        f"{device.type}{workers}, {settings.epochs} epochs, batch {settings.batch_size}, "
        f"{settings.optimizer} lr {settings.lr:g} ({settings.schedule}), "
        f"bf16 {'on' if bf16 else 'off'}, {torch.get_num_threads()} threads"
        + (", CUDA graphs" if execution.cuda_graphs and device.type == "cuda"
           and not world.distributed else "")
        + (f", seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else ""))

    # a sweep trial (pipeline/trial.py): the first copy's epochs are reported, and the pruner
    # may stop it (not a data-parallel run, whose workers must agree)
    link = open_trial(spec.trial, settings.epochs) if spec.trial and world.main else None
    if spec.trial and world.main and link is None:
        say(f"note: models.{args.model}.trial is {spec.trial!r}, but no running sweep trial "
            f"of that name is given ({STORAGE_ENV}): training as usual, reporting to no sweep")
    if link is not None and world.distributed:
        say("note: a data-parallel run reports to its sweep trial but is not pruned")

    def stop_check(seed: int):
        if link is None or seed != seeds[0] or world.distributed:
            return None
        return lambda row: link.prune_reason(row.epoch)

    key = inputs_key(
        {"dataset": args.dataset, "model": args.model, "architecture": architecture.model_dump(),
         "settings": settings.model_dump(), "seeds": seeds, "amp": train_params.amp,
         "channels_last": train_params.channels_last, "device": device.type,
         "world_size": world.size, "torch": str(torch.__version__),
         # changes the bits: captured or eager Adam (the thread count: see below)
         "cuda_graphs": execution.cuda_graphs and device.type == "cuda"},
        [*(args.data / split_file(name) for name in SPLITS), *code_files()])
    store = ResumeStore(args.state, key, world.rank, execution.save_state_every_s)
    states = store.load()
    saved = agreed_state(states, world)
    if saved is None and states:  # the workers have no epoch in common: none is kept
        store.clear()
    if saved is not None and saved.get("threads") != torch.get_num_threads():
        # the order of float sums follows the thread count: `auto` takes the saved run's,
        # a number set since means other bits, so the run starts afresh
        if execution.threads == "auto" and isinstance(saved.get("threads"), int):
            torch.set_num_threads(saved["threads"])
            say(f"note: resuming with the saved run's {saved['threads']} threads")
        else:
            say(f"note: the saved state used {saved.get('threads')} threads, "
                f"execution.threads is now {execution.threads}: starting afresh")
            saved = None
            store.clear()

    def train_copies(on_epoch) -> list:
        """Every seed copy, the finished ones and the current one's epochs taken from the
        saved state; the rows they logged before are logged again into the fresh folders."""
        state = saved or {}
        results = [TrainResult.from_state(done) for done in state.get("done", [])]
        for seed, result in zip(seeds, results, strict=False):
            for row in result.history if on_epoch is not None else []:
                on_epoch(row, None, seed)
        current = state.get("current")
        if state:
            epoch = len(current["history"]) if current is not None else 0
            say(f"resuming {args.dataset}/{args.model} "
                + (f"seed {seeds[len(results)]} " if len(seeds) > 1 else "")
                + f"at epoch {epoch + 1} of {settings.epochs}")
        for seed in seeds[len(results):]:
            prefix = f"seed {seed}  " if len(seeds) > 1 else ""
            done = [r.to_state() for r in results]

            def save_state(training, done=done) -> None:
                # every worker saves the same epochs, and none once one could not
                if world.any(store.due()) and not world.any(store.failed):
                    store.save({"done": done, "current": training.state_dict(),
                                "threads": torch.get_num_threads()})

            results.append(fit(
                architecture, settings, splits, device, seed, train_params.amp,
                train_params.channels_last, show_progress=world.main and sys.stderr.isatty(),
                log=lambda line, prefix=prefix: say(prefix + line),
                on_epoch=on_epoch and (lambda row, model, seed=seed: on_epoch(row, model, seed)),
                world=world, cuda_graphs=execution.cuda_graphs, resume=current,
                save_state=save_state,
                epochs_after=(len(seeds) - len(results) - 1) * settings.epochs,
                stop_check=stop_check(seed)))
            current = None
            if link is not None and link.pruned_at is not None:
                break  # a pruned trial trains no seed copies after the first
            if len(results) < len(seeds) and not world.any(store.failed):
                store.save({"done": [r.to_state() for r in results], "current": None,
                            "threads": torch.get_num_threads()})
        return results

    if not world.main:  # the other workers train and write nothing
        train_copies(None)
        world.barrier()  # their states go once worker 0 has written the outputs
        store.clear()
        return
    # Both folders are built aside and swapped in whole, so a failed run leaves no half-log.
    with contextlib.ExitStack() as stack:
        live_dir = stack.enter_context(fresh_directory(args.live))
        tensorboard_dir = stack.enter_context(fresh_directory(args.tensorboard))
        describe_tensorboard_folder(tensorboard_dir, f"{args.dataset}/{args.model}",
                                    execution.tensorboard)
        tracker = RunTracker(live_dir, tensorboard_dir if execution.tensorboard else None,
                             seeds)
        def log_epoch(row, model, seed) -> None:
            tracker.log_epoch(row, model, seed)
            if link is not None and seed == seeds[0]:
                link.record(row.epoch, row.valid_accuracy, row.valid_loss)

        results = train_copies(log_epoch)
        seeds = seeds[:len(results)]  # fewer when a sweep trial was pruned
        labels = splits["test"].labels
        summary = summarise(results, labels, n_params)
        tracker.log_summary(summary)
        if link is not None and link.pruned_at is not None:
            tracker.log_pruned(link.pruned_at)
        predicted = results[0].test_logits.argmax(1)
        tracker.log_confusion([classes[i] for i in labels], [classes[i] for i in predicted])
        tracker.log_hyperparameters(
            {"dataset": args.dataset, "model": args.model, "arch": architecture.arch,
             **settings.model_dump()},
            {seed: {"test_accuracy": r.test_accuracy, "test_loss": r.test_loss}
             for seed, r in zip(seeds, results, strict=True)})
        tracker.close()
        device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else platform.processor() or platform.machine())
        made_on = machine.record(str(device), bool(bf16), torch.get_num_threads(), world.size)
        write_machine(live_dir, made_on)
        run_info = {"seeds": seeds, "bf16": bool(bf16), "channels_last": channels_last,
                    "device": str(device), "world_size": world.size,
                    "torch_version": str(torch.__version__), "machine": made_on,
                    **settings.model_dump(),
                    "stopped": [{"epochs": len(r.history), "reason": r.stop_reason}
                                for r in results]}
        Checkpoint(architecture, input_shape, classes, [r.state_dict for r in results],
                   results[0].initial_state_dict, args.dataset, args.model,
                   run_info).save(args.checkpoint)
    world.barrier()
    store.clear()  # the outputs are written (a kill before the folders' swap resumes again)
    if link is not None:
        link.finish()
    first = results[0]
    samples = len(first.epoch_seconds) * len(splits["train"].labels)
    write_timing(args.timing, Timing(
        device=f"{device} ({device_name})" + workers,
        train_seconds=round(first.train_seconds, 3),
        samples_per_second=round(samples / first.train_seconds, 1) if first.train_seconds else 0,
        epoch_seconds=[round(s, 4) for s in first.epoch_seconds]))
    print(f"{args.dataset}/{args.model}: test accuracy {first.test_accuracy:.4f}, "
          f"loss {first.test_loss:.4f} (best epoch {first.best_epoch}), "
          f"{samples / max(first.train_seconds, 1e-9):,.0f} samples/s"
          + (f"; {len(seeds)} seeds {summary.seeds.test_accuracy_mean:.4f} "
             f"+- {summary.seeds.test_accuracy_std:.4f}, their ensemble "
             f"{summary.seeds.ensemble_test_accuracy:.4f}" if summary.seeds else ""))


if __name__ == "__main__":
    run_stage(main, sweep=True)
