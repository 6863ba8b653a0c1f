"""Data-parallel training: the train stage on 2 gloo processes (and 2 "machines" on 127.0.0.1)
against one process, as DVC runs it; a worker that dies; a launcher that is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.distributed import (
    JOIN_TIMEOUT_ENV,
    NNODES_ENV,
    NODE_RANK_ENV,
    DistributedError,
    World,
    launcher_arguments,
)
from pipeline.tracking import read_history, read_summary
from tests.conftest import ROOT, copy_repository, free_port, run_module, sh
from tests.test_tracking import write_prepared

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

OUTPUTS = ["model.pt", "live", "tb", "timing.json"]


def stage_args(tmp_path: Path, processes: int, arch: dict, epochs: int = 3, seeds: int = 1,
               out: str = "out") -> list[str]:
    data = tmp_path / "prepared"
    if not data.exists():
        write_prepared(data)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"]["net"] = {**arch, "seeds": seeds}
    # fp32: bf16 rounds each worker's partial gradients, so only fp32 runs agree to float noise
    params["train"].update(epochs=epochs, batch_size=50, lr=0.05, amp=False)
    params["execution"].update(processes=processes, tensorboard=True)
    path = tmp_path / f"params-{processes}.yaml"
    path.write_text(yaml.safe_dump(params))
    folder = tmp_path / out
    return ["--params", str(path), "--dataset", "digits", "--model", "net", "--data", str(data),
            "--checkpoint", str(folder / "model.pt"), "--live", str(folder / "live"),
            "--tensorboard", str(folder / "tb"), "--timing", str(folder / "timing.json")]


def train(tmp_path: Path, processes: int, arch: dict, **kwargs) -> tuple[Path, str]:
    out = f"out-{processes}"
    done = run_module("pipeline.stages.train",
                      *stage_args(tmp_path, processes, arch, out=out, **kwargs), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / out, done.stdout


LINEAR = {"arch": "linear"}
CONV = {"arch": "convnet", "channels": [4, 8], "hidden": [16]}


@pytest.mark.parametrize("arch", [LINEAR, CONV], ids=["linear", "convnet"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, arch):
    one, _ = train(tmp_path, 1, arch, seeds=2)
    two, printed = train(tmp_path, 2, arch, seeds=2)

    assert printed.count("on cpu x 2 processes") == 1  # only rank 0 speaks
    assert sorted(p.name for p in two.iterdir()) == sorted(OUTPUTS)  # one set of outputs
    single, double = load_checkpoint(one / "model.pt"), load_checkpoint(two / "model.pt")
    assert (single.run["world_size"], double.run["world_size"]) == (1, 2)
    for a, b in zip(single.state_dicts, double.state_dicts, strict=True):  # every seed copy
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    history_one, history_two = read_history(one / "live"), read_history(two / "live")
    for a, b in zip(history_one, history_two, strict=True):
        assert b.train_accuracy == a.train_accuracy and b.valid_accuracy == a.valid_accuracy
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
        assert b.valid_loss == pytest.approx(a.valid_loss, rel=1e-4)
    summary_one, summary_two = read_summary(one / "live"), read_summary(two / "live")
    assert summary_two.test_accuracy == summary_one.test_accuracy
    assert summary_two.seeds.ensemble_test_accuracy == summary_one.seeds.ensemble_test_accuracy
    assert sorted(p.name for p in (two / "tb").iterdir()) == ["README.txt", "seed0", "seed1"]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_dropout_models_train_with_their_own_masks_per_worker(tmp_path):
    # masks differ per worker, so only the run itself (and identical replicas) is checked
    two, printed = train(tmp_path, 2, {**CONV, "dropout": 0.3})
    assert "x 2 processes" in printed
    assert read_summary(two / "live").test_accuracy > 0.8


def test_two_machines_of_one_process_each_on_localhost(tmp_path):
    one, _ = train(tmp_path, 1, LINEAR)
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        args = stage_args(tmp_path, 1, LINEAR, out=f"node-{rank}")
        environ = {**os.environ, NNODES_ENV: "2", NODE_RANK_ENV: str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                   "PYTHONPATH": str(ROOT)}
        nodes.append(subprocess.Popen([sys.executable, "-m", "pipeline.stages.train", *args],
                                      cwd=tmp_path, env=environ, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    printed = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], printed
    assert "on cpu x 2 processes on 2 machines" in printed[0]
    assert "parameters" not in printed[1]  # node 1 trains and writes nothing
    assert not (tmp_path / "node-1").exists()
    assert sorted(p.name for p in (tmp_path / "node-0").iterdir()) == sorted(OUTPUTS)
    two = load_checkpoint(tmp_path / "node-0/model.pt")
    assert two.run["world_size"] == 2
    for name, value in load_checkpoint(one / "model.pt").state_dicts[0].items():
        torch.testing.assert_close(two.state_dicts[0][name], value, rtol=1e-4, atol=1e-5)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (this test's own folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if text in command and state != "Z":
                found.append(int(entry.name))
    return found


def workers_of(launcher: subprocess.Popen, marker: str, deadline_s: float = 60) -> list[int]:
    """Wait until torchrun has started both workers, then give them time to start training."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        workers = [pid for pid in processes_mentioning(marker) if pid != launcher.pid
                   and "-m\0pipeline.distributed\0" not in Path(
                       f"/proc/{pid}/cmdline").read_text(errors="replace")]
        if len(workers) == 2:
            time.sleep(4)
            return workers
        time.sleep(0.2)
    raise AssertionError("the workers did not start")


def start_long_run(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    args = stage_args(tmp_path, 2, LINEAR, epochs=100_000)
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-m", "pipeline.stages.train", *args],
                                cwd=tmp_path, env=environ, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return launcher, args[args.index("--params") + 1]


def wait_until_gone(marker: str, deadline_s: float = 30) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_mentioning(marker)


def test_a_worker_that_dies_fails_the_stage_cleanly(tmp_path):
    launcher, marker = start_long_run(tmp_path)
    try:
        workers = workers_of(launcher, marker)
        os.kill(max(workers), signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: a training worker failed")
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr
    assert wait_until_gone(marker) == []  # no worker left behind
    # no checkpoint, logs or timing, and no half-written staging either
    assert list((tmp_path / "out").rglob("*")) == []


def test_a_killed_stage_leaves_no_worker_behind(tmp_path):
    launcher, marker = start_long_run(tmp_path)
    try:
        workers_of(launcher, marker)
        launcher.kill()  # what an impatient user or a CI timeout does
        launcher.wait(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert wait_until_gone(marker) == []


def test_dvc_repro_trains_on_two_processes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repository(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["run"]["models"] = ["cnn"]
    params["train"].update(epochs=20)
    params["execution"].update(processes=2)
    params["models"]["cnn"]["seeds"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    printed = sh(["dvc", "repro"], repo)
    assert "digits/cnn: cnn, 26,194 parameters, on cpu x 2 processes" in printed
    checkpoint = load_checkpoint(repo / "models/digits/cnn.pt")
    assert checkpoint.run["world_size"] == 2
    assert read_summary(repo / "reports/live/digits/cnn").test_accuracy > 0.5
    assert "Data and pipelines are up to date" in sh(["dvc", "repro"], repo)


# The world's pieces, without launching anything.

@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("count", [0, 1, 5, 512, 1001])
def test_shards_cover_every_item_once(size, count):
    shards = [World(rank, size).shard(count) for rank in range(size)]
    covered = [i for s in shards for i in range(count)[s]]
    assert covered == list(range(count))
    assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1


def test_the_launcher_is_set_by_params_and_the_cluster_by_the_environment():
    assert launcher_arguments(1, {}) == []
    assert launcher_arguments(2, {}) == ["--nproc-per-node", "2", "--standalone"]
    cluster = {NNODES_ENV: "2", NODE_RANK_ENV: "1", "MASTER_ADDR": "10.0.0.5",
               "MASTER_PORT": "29500"}
    assert launcher_arguments(1, cluster) == [
        "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1",
        "--master-addr", "10.0.0.5", "--master-port", "29500", "--rdzv-conf", "timeout=600"]
    with pytest.raises(DistributedError, match="needs MASTER_ADDR and MASTER_PORT"):
        launcher_arguments(1, {NNODES_ENV: "2", NODE_RANK_ENV: "0"})
    with pytest.raises(DistributedError, match="PIPELINE_NODE_RANK='2': expected a whole number "
                                               "from 0 to 1"):
        launcher_arguments(1, {**cluster, NODE_RANK_ENV: "2"})
    with pytest.raises(DistributedError, match="PIPELINE_NNODES='two'"):
        launcher_arguments(1, {NNODES_ENV: "two"})
    with pytest.raises(DistributedError, match="MASTER_PORT='abc': expected a whole number from 1 "
                                               "to 65535"):
        launcher_arguments(1, {**cluster, "MASTER_PORT": "abc"})
    with pytest.raises(DistributedError, match="MASTER_ADDR='10.0.0.5; rm': expected the host"):
        launcher_arguments(1, {**cluster, "MASTER_ADDR": "10.0.0.5; rm"})
    with pytest.raises(DistributedError, match="its port goes in MASTER_PORT"):
        launcher_arguments(1, {**cluster, "MASTER_ADDR": "10.0.0.5:29500"})
    for address in ("node_1", "fe80::1", "[::1]"):
        assert launcher_arguments(1, {**cluster, "MASTER_ADDR": address})[7] == address
    with pytest.raises(DistributedError, match="PIPELINE_JOIN_TIMEOUT='0'"):
        launcher_arguments(1, {**cluster, JOIN_TIMEOUT_ENV: "0"})
    assert launcher_arguments(1, {**cluster, JOIN_TIMEOUT_ENV: "30"})[-2:] == [
        "--rdzv-conf", "timeout=30"]


def cluster_stage(tmp_path: Path, rank: int, **environment: str) -> subprocess.CompletedProcess:
    args = stage_args(tmp_path, 1, LINEAR, out=f"node-{rank}")
    environ = {**os.environ, NNODES_ENV: "2", NODE_RANK_ENV: str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
               "PYTHONPATH": str(ROOT), **environment}
    return subprocess.run([sys.executable, "-m", "pipeline.stages.train", *args], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_machine_that_never_joins_is_waited_for_as_long_as_said(tmp_path, rank):
    done = cluster_stage(tmp_path, rank, **{JOIN_TIMEOUT_ENV: "2"})
    assert done.returncode == 1
    assert done.stdout.startswith(f"machine {rank} of 2: waiting up to 2 s for the other machine "
                                  "to join at 127.0.0.1:")
    assert done.stderr.strip().splitlines() == [
        f"error: machine {rank} of 2: the other machine did not join at 127.0.0.1:"
        f"{done.stdout.split(':')[2].split()[0]} within 2 s; start the train stage on all 2 "
        "machines with the same PIPELINE_NNODES, MASTER_ADDR and MASTER_PORT and each its own "
        f"PIPELINE_NODE_RANK, and check that port {done.stdout.split(':')[2].split()[0]} of "
        "127.0.0.1 is reachable from every machine"]
    assert not (tmp_path / f"node-{rank}").exists()


def test_a_bad_cluster_environment_is_refused_before_anything_starts(tmp_path):
    done = cluster_stage(tmp_path, 0, MASTER_PORT="abc")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("error: environment variable MASTER_PORT='abc': expected a whole "
                           "number from 1 to 65535\n")


def _replica_worker(rank: int, store: str, perturb: bool, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)
    if perturb and rank == 1:
        with torch.no_grad():
            module.bias[2] += 0.25
    results[rank] = World(rank, 2).replica_difference(module)
    dist.destroy_process_group()


@pytest.mark.parametrize("perturb", [False, True])
def test_diverged_replicas_are_measured(tmp_path, perturb):
    results = mp.Manager().dict()
    mp.spawn(_replica_worker, args=(str(tmp_path / "store"), perturb, results), nprocs=2)
    assert dict(results) == ({0: 0.25, 1: 0.25} if perturb else {0: 0.0, 1: 0.0})


def test_ctrl_c_stops_every_worker_and_says_so(tmp_path):
    launcher, marker = start_long_run(tmp_path)
    try:
        workers_of(launcher, marker)
        launcher.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted; no partial outputs were kept"
    assert wait_until_gone(marker) == []
    assert list((tmp_path / "out").rglob("*")) == []


def test_two_workers_killed_at_random_resume_to_the_same_bytes(tmp_path):
    """Each worker saves its own state, the same epochs (worker 0's clock decides), and keeps
    the save before; killed between two workers' saves they resume from the epoch both have."""
    args = stage_args(tmp_path, 2, {**CONV, "dropout": 0.3}, epochs=120)
    state = tmp_path / "state"
    params = Path(args[args.index("--params") + 1])
    settings = yaml.safe_load(params.read_text())
    settings["execution"].update(save_state_every_s=0)
    params.write_text(yaml.safe_dump(settings))
    whole = args[:]
    whole[whole.index("--checkpoint") + 1] = str(tmp_path / "whole.pt")
    done = run_module("pipeline.stages.train", *whole, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = [*args, "--state", str(state)]
    for delay in (0.3, 1.1):
        run = subprocess.Popen([sys.executable, "-m", "pipeline.stages.train", *killed],
                               cwd=tmp_path, env=environ, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not ((state / "rank0.pt").exists() and (state / "rank1.pt").exists()):
            assert run.poll() is None and time.monotonic() < deadline, "no state was saved"
            time.sleep(0.01)
        time.sleep(delay)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    finished = run_module("pipeline.stages.train", *killed, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "resuming digits/net at epoch " in finished.stdout
    assert (tmp_path / "out/model.pt").read_bytes() == (tmp_path / "whole.pt").read_bytes()
    assert not state.exists()
