"""Data-parallel training on torch.distributed, started by its own launcher (torchrun).

The train stage stays one command. With `execution.processes: N` (or several machines) it runs
`python -m torch.distributed.run` on itself and waits: N worker processes per machine, NCCL and
one GPU each on CUDA, gloo on CPU. Every worker holds the whole uint8 split, draws the same
seeded permutation each epoch and trains on its own contiguous slice of every global batch
(`batch_size` stays the global batch); DistributedDataParallel averages the gradients. Sums of
loss and accuracy are all-reduced, and evaluation splits the images between the workers so each
is counted once. Only global rank 0 writes outputs.

Machines are set by the environment, not by params.yaml, so a stage's hash does not depend on
the cluster it ran on:

    PIPELINE_NNODES      how many machines take part (default 1)
    PIPELINE_NODE_RANK   this machine's index, 0 .. NNODES-1; machine 0 writes the outputs
    MASTER_ADDR, MASTER_PORT   where machine 0 listens (torch's own names)
    PIPELINE_JOIN_TIMEOUT      seconds to wait for every machine to join (default 600)

Workers die with their launcher (Linux: PR_SET_PDEATHSIG), and the launcher with the stage, so
a killed run leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.artifacts import sweep_stale_staging
from pipeline.cores import usable_cores
from pipeline.errors import PipelineError

WORKER_ENV = "PIPELINE_DISTRIBUTED_WORKER"  # set for the workers: they must not relaunch
NNODES_ENV = "PIPELINE_NNODES"
NODE_RANK_ENV = "PIPELINE_NODE_RANK"
JOIN_TIMEOUT_ENV = "PIPELINE_JOIN_TIMEOUT"
DEFAULT_JOIN_TIMEOUT_S = 600  # torchrun's own default for a static rendezvous
# How the launcher (`python -m pipeline.distributed`) tells the stage why it stopped
WORKER_FAILED_STATUS, NOT_JOINED_STATUS = 1, 3
_CPP_LOG_ENV, _USER_CPP_LOG_ENV = "TORCH_CPP_LOG_LEVEL", "PIPELINE_USER_TORCH_CPP_LOG_LEVEL"
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")  # Compose's names hold "_"


def _is_host(address: str) -> bool:
    """A host name, an IPv4 address, or an IPv6 one, bracketed or not (no port: that goes in
    MASTER_PORT)."""
    if _HOST_NAME.fullmatch(address):
        return True
    bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        return ipaddress.ip_address(bare).version == 6
    except ValueError:
        return False


class DistributedError(PipelineError):
    pass


@dataclass(frozen=True)
class World:
    """This process's place among the workers (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, count: int) -> slice:
        """This rank's contiguous part of `count` items (parts differ by at most one)."""
        return slice(count * self.rank // self.size, count * (self.rank + 1) // self.size)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def _reduced(self, value: int, op: dist.ReduceOp.RedOpType) -> int:
        if not self.distributed:
            return value
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces on the GPU
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=op)
        return int(tensor.item())

    def all_min(self, value: int) -> int:
        """The smallest of every rank's `value`."""
        return self._reduced(value, dist.ReduceOp.MIN)

    def all_equal(self, value: int) -> bool:
        """Whether every rank holds the same `value`."""
        return self._reduced(value, dist.ReduceOp.MIN) == self._reduced(value, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """Whether some rank's `flag` is true (every rank gets the same answer)."""
        return self._reduced(int(flag), dist.ReduceOp.MAX) == 1

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.distributed:
            dist.barrier()

    def gather_shards(self, part: torch.Tensor, count: int) -> torch.Tensor:
        """Every rank's `shard(count)` rows of a tensor, concatenated in rank order."""
        if not self.distributed:
            return part
        longest = -(-count // self.size)
        padded = part.new_zeros((longest, *part.shape[1:]))
        padded[: len(part)] = part
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(gathered, padded)
        shards = [World(r, self.size).shard(count) for r in range(self.size)]
        return torch.cat([rows[: s.stop - s.start] for s, rows in zip(shards, gathered,
                                                                      strict=True)])


    def replica_difference(self, module: torch.nn.Module) -> float:
        """The largest absolute difference between this module's parameters on any worker
        and on rank 0 (0.0 when DDP kept the replicas identical, as it must)."""
        if not self.distributed:
            return 0.0
        with torch.no_grad():
            local = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
            reference = local.clone()
            dist.broadcast(reference, src=0)
            difference = (local - reference).abs().max().reshape(1)
            dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        return float(difference.item())


SINGLE_PROCESS = World()


def _environment_int(environ: Mapping[str, str], name: str, default: int, low: int,
                     high: int) -> int:
    text = environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise DistributedError(f"environment variable {name}={text!r}: expected a whole number "
                               f"from {low} to {high}")
    return value


def current_world(environ: Mapping[str, str] = os.environ) -> World:
    """The world torchrun set up for this worker; one process outside a launch."""
    if environ.get(WORKER_ENV) != "1":
        return SINGLE_PROCESS
    return World(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"]))


@dataclass(frozen=True)
class Cluster:
    """The machines taking part, as the environment sets them (one machine: no address)."""

    nodes: int = 1
    node_rank: int = 0
    address: str = ""
    port: int = 0
    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S

    def others(self) -> str:
        return "the other machine" if self.nodes == 2 else f"the other {self.nodes - 1} machines"

    def waiting_for(self) -> str:
        return (f"machine {self.node_rank} of {self.nodes}: waiting up to {self.join_timeout_s} s"
                f" for {self.others()} to join at {self.address}:{self.port}")


def cluster_from(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster the environment describes, checked before anything is started."""
    nodes = _environment_int(environ, NNODES_ENV, 1, 1, 1024)
    if nodes == 1:
        return Cluster()
    node_rank = _environment_int(environ, NODE_RANK_ENV, -1, 0, nodes - 1)
    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(n)]
    if missing:
        raise DistributedError(f"{NNODES_ENV}={nodes} needs {' and '.join(missing)} in the "
                               "environment: the address and port of machine 0")
    address = environ["MASTER_ADDR"]
    if not _is_host(address):
        raise DistributedError(f"environment variable MASTER_ADDR={address!r}: expected the "
                               "host name or IP address of machine 0 (such as 10.0.0.1; its "
                               "port goes in MASTER_PORT)")
    port = _environment_int(environ, "MASTER_PORT", 0, 1, 65535)
    timeout = _environment_int(environ, JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT_S, 1, 86_400)
    return Cluster(nodes, node_rank, address, port, timeout)


def launcher_arguments(processes: int, environ: Mapping[str, str] = os.environ) -> list[str]:
    """torchrun's options for this machine; [] when one process on one machine is asked."""
    cluster = cluster_from(environ)
    if processes == 1 and cluster.nodes == 1:
        return []
    arguments = ["--nproc-per-node", str(processes)]
    if cluster.nodes == 1:
        return [*arguments, "--standalone"]  # a free local port, no cluster settings
    return [*arguments, "--nnodes", str(cluster.nodes), "--node-rank", str(cluster.node_rank),
            "--master-addr", cluster.address, "--master-port", str(cluster.port),
            "--rdzv-conf", f"timeout={cluster.join_timeout_s}"]


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies, so no worker outlives a killed stage."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to set
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_workers(launcher: list[str], module: str, argv: list[str], processes: int) -> None:
    """Run `python -m module argv` under torchrun and wait; a failed worker fails the stage
    (torchrun then stops the others) and whatever they had half-written is removed."""
    environ = {**os.environ, WORKER_ENV: "1"}
    if processes > 1 and "OMP_NUM_THREADS" not in environ:  # share this machine's cores
        environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // processes))
    # the launcher's C++ log would print a stack dump for every failed try to reach machine 0
    environ[_USER_CPP_LOG_ENV] = environ.get(_CPP_LOG_ENV, "")
    environ[_CPP_LOG_ENV] = "FATAL"
    cluster = cluster_from(environ)
    if cluster.nodes > 1:
        print(f"{cluster.waiting_for()} ({JOIN_TIMEOUT_ENV} sets how long)", flush=True)
    command = [sys.executable, "-m", __spec__.name, *launcher, "-m", module, *argv]
    launched = subprocess.Popen(command, env=environ, preexec_fn=_die_with_parent)
    forward = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted = []

    def pass_on(number: int, _frame) -> None:  # torchrun stops its workers on these
        interrupted.append(number)
        launched.send_signal(number)

    try:
        for handled in forward:
            signal.signal(handled, pass_on)
        returncode = launched.wait()
    finally:
        for handled, previous in forward.items():
            signal.signal(handled, previous)
        if launched.poll() is None:
            launched.kill()
            launched.wait()
    if returncode != 0:
        sweep_stale_staging(Path.cwd())
        if interrupted:
            raise KeyboardInterrupt
        if returncode == NOT_JOINED_STATUS:
            raise DistributedError(
                f"machine {cluster.node_rank} of {cluster.nodes}: {cluster.others()} did not join "
                f"at {cluster.address}:{cluster.port} within {cluster.join_timeout_s} s; start "
                f"the train stage on all {cluster.nodes} machines with the same {NNODES_ENV}, "
                f"MASTER_ADDR and MASTER_PORT and each its own {NODE_RANK_ENV}, and check that "
                f"port {cluster.port} of {cluster.address} is reachable from every machine")
        raise DistributedError(
            f"a training worker failed (torchrun exit status {returncode}; its output is "
            "above); the other workers were stopped and no output was written")


def check_devices(device: torch.device, processes: int) -> None:
    """Refuse, before launching, what the workers could not do on this machine."""
    if device.type not in ("cpu", "cuda"):
        raise DistributedError(f"execution.processes={processes} needs execution.device cpu or "
                               f"cuda (torch.distributed has no {device.type} backend); set "
                               "execution.processes: 1")
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise DistributedError(f"execution.processes={processes} but this machine has "
                               f"{torch.cuda.device_count()} CUDA devices: one process per GPU")
    if device.type == "cpu" and processes > usable_cores():
        raise DistributedError(f"execution.processes={processes} but this process may use "
                               f"{usable_cores()} CPU cores: more workers than cores only share "
                               "them, at the memory of a whole model and data copy each; set "
                               f"execution.processes to at most {usable_cores()}")


def init_worker(world: World, device: torch.device) -> torch.device:
    """Join the process group: NCCL and this worker's own GPU on CUDA, gloo elsewhere."""
    _die_with_parent()
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"execution.processes asks for GPU {world.local_rank} but this machine has "
                f"{torch.cuda.device_count()}; set execution.processes to at most that")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def peers_lost_as_errors(world: World) -> Iterator[None]:
    """A worker whose peer died gets the transport's error in the middle of a collective
    operation (gloo: "Connection reset by peer"): said in one line, the dead peer's own output
    being the one that tells why."""
    try:
        yield
    except RuntimeError as error:
        if not world.distributed or not (isinstance(error, dist.DistError)
                                         or "gloo" in str(error)):
            raise
        reason = re.sub(r"^\[[^\]]*\] *", "", str(error).splitlines()[0]).split(". ")[0][:200]
        raise DistributedError(f"worker {world.rank} lost its connection to another worker "
                               f"({reason}): that worker stopped or died, its output above says "
                               "why") from None


def close_worker(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _launch() -> None:
    """torchrun, as the train stage starts it: a worker that fails has said why on its own
    output and the stage says the rest in one line, so torchrun's traceback of the same failure
    (ChildFailedError) and of a rendezvous that timed out are not printed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    user_level = os.environ.pop(_USER_CPP_LOG_ENV, "")  # the workers log as the user asked
    if user_level:
        os.environ[_CPP_LOG_ENV] = user_level
    else:
        os.environ.pop(_CPP_LOG_ENV, None)
    try:
        torchrun()
    except ChildFailedError:
        sys.exit(WORKER_FAILED_STATUS)
    except (RuntimeError, ValueError) as error:  # the store's DistStoreError is a RuntimeError
        if "timed out" not in str(error).lower() and "timeout" not in str(error).lower():
            raise
        sys.exit(NOT_JOINED_STATUS)


if __name__ == "__main__":
    _launch()
