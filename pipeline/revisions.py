"""Reading other revisions of the project: the committed baseline, `dvc exp run` experiments, a
tag of a published result.

A revision's git files (params.yaml, dvclive's metrics and curves) are always there; its DVC
outputs (evaluation records, checkpoints, TensorBoard logs) are only where this clone's cache has
them, and a clone on another machine, a garbage-collected cache or an older layout lacks them.
`RevisionFiles.read_bytes` is the one place any other revision's file is read: whatever DVC,
dvc-data, scmrepo or the file system raise there, the file counts as missing, with a one-line
reason the readers show ("not in this clone's DVC cache: `dvc fetch` ..."), and the caller goes on
with what git has. Nothing that reads another revision can fail a stage.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

FINISHED = (None, "Success")  # exp_show's State of a usable row; queued/running/failed are not
FETCH_HINT = ("`dvc fetch --all-branches` (or `dvc exp pull <remote> <experiment>`) from a "
              "remote that has them")


def dvc_yaml_paths(repo: Path, *names: str) -> list[str]:
    """Entries of dvc.yaml's `vars` (where the project's paths are set)."""
    try:
        document = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PipelineError(f"{repo / 'dvc.yaml'}: cannot be read ({error}); run this from "
                            "the project root") from error
    found: dict[str, object] = {}
    for entry in document.get("vars") or []:
        if isinstance(entry, dict):
            found.update(entry)
    missing = [n for n in names if not isinstance(found.get(n), str)]
    if missing:
        raise PipelineError(f"{repo / 'dvc.yaml'}: `vars` has no path for {', '.join(missing)}")
    return [str(found[n]) for n in names]


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class RevisionFiles:
    """The files of one revision (`rev` None: the workspace), read through DVC's file system.
    `missing` collects, per path asked for, why it could not be read (one line, no path)."""

    repo: Path
    rev: str | None
    missing: dict[str, str] = field(default_factory=dict)
    _fs: Any = None
    _outputs: list[str] | None = None

    @property
    def label(self) -> str:
        return "the workspace" if self.rev is None else f"revision {self.rev[:12]}"

    def _filesystem(self) -> Any:
        """DVC's file system at the revision, opened once, on first use."""
        if self._fs is None:
            from dvc.api import DVCFileSystem

            self._fs = DVCFileSystem(str(self.repo), rev=self.rev)
        return self._fs

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes, or None with the reason in `missing[path]`."""
        try:
            return self._filesystem().read_bytes(path)
        except Exception as error:  # noqa: BLE001 (the boundary: DVC and its libraries raise
            # many types for an absent cache entry, a damaged index or an unreadable commit)
            self.missing[path] = self._why_missing(path, error)
            return None

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            self.missing[path] = f"not UTF-8 text ({error.reason})"
            return None

    def find(self, folder: str) -> list[str] | None:
        """Every file under `folder` (paths relative to the project), or None with the reason."""
        try:
            fs = self._filesystem()
            if not fs.isdir(folder):
                return []
            return sorted(str(p).lstrip("/") for p in fs.find(folder))
        except Exception as error:  # noqa: BLE001 (see read_bytes)
            self.missing[folder] = self._why_missing(folder, error)
            return None

    def _why_missing(self, path: str, error: BaseException) -> str:
        """Why a file could not be read, without its path (callers group files by reason)."""
        if self.rev is None and isinstance(error, FileNotFoundError):
            return "missing from the workspace; `dvc repro` (or `dvc checkout`) brings it back"
        if self.is_output(path):
            return (f"not in this clone's DVC cache (made on another machine, not pulled, or "
                    f"garbage-collected); to compare them, {FETCH_HINT}")
        if isinstance(error, FileNotFoundError):
            return f"not in {self.label} (an older layout, or never written)"
        return f"cannot be read at {self.label} ({type(error).__name__}: {_one_line(error)})"

    def is_output(self, path: str) -> bool:
        """Whether `path` lies in, or holds, an output that the revision's dvc.lock stores in
        DVC's cache."""
        if self._outputs is None:
            self._outputs = []
            try:
                text = self._filesystem().read_text("dvc.lock", encoding="utf-8")
                lock = yaml.safe_load(text) or {}
                for stage in (lock.get("stages") or {}).values():
                    self._outputs += [str(o["path"]) for o in stage.get("outs") or []
                                      if isinstance(o, dict) and "path" in o]
            except Exception:  # noqa: BLE001 (no readable lock: no known outputs)
                pass
        path = path.rstrip("/")
        return any(path == out or path.startswith(out.rstrip("/") + "/")
                   or out.startswith(path + "/") for out in self._outputs)


@dataclass(frozen=True)
class Revision:
    name: str      # as the report and TensorBoard show it
    rev: str       # what git and `dvc.api.DVCFileSystem` resolve
    committed: bool


def list_revisions(repo: Path, limit: int | None = None) -> list[Revision]:
    """The committed baseline and up to `limit` finished experiments derived from it, as
    `dvc exp show` lists them; empty outside a git/DVC repository, before the first commit, or
    where DVC cannot list them (nothing to compare is never an error)."""
    try:
        import dvc.api

        rows = dvc.api.exp_show(repo=str(repo))
    except Exception:  # noqa: BLE001 (the boundary, as in RevisionFiles.read_bytes)
        return []
    baselines = [r for r in rows if r.get("typ") == "baseline" and r.get("rev") != "workspace"]
    children = [r for r in rows if r.get("typ") != "baseline" and r.get("Experiment")
                and r.get("State") in FINISHED][:limit]
    return ([Revision(f"{r['rev']} (committed)", r["rev"], True) for r in baselines[:1]]
            + [Revision(r["Experiment"], r["rev"], False) for r in children])


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        raise PipelineError(f"cannot run git in {repo} ({error})") from None


def commit_of(repo: Path, rev: str) -> str:
    """The commit a revision names (a commit, branch, tag, or a `dvc exp` experiment's
    name), or a one-line refusal."""
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done.returncode == 0:
        return done.stdout.strip()
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise PipelineError(f"{repo} is not in a git repository: run this in the project's "
                            "clone")
    commit = experiment_commits(repo).get(rev)
    if commit is not None:
        return commit
    raise PipelineError(f"{rev!r} is not a commit, branch, tag or experiment of the "
                        f"repository at {repo} (`git log --oneline`, `git tag`, "
                        "`dvc exp list -A`)")


def experiment_commits(repo: Path) -> dict[str, str]:
    """Every `dvc exp` experiment of any commit by name, with its commit (the refs are
    refs/exps/<baseline commit split 2/38>/<name>; a name used under two baselines: the first)."""
    refs = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    found: dict[str, str] = {}
    for line in refs.stdout.splitlines():
        commit, _, ref = line.partition(" ")
        found.setdefault(ref.rsplit("/", 1)[-1], commit)
    return found


def experiments_of_other_commits(repo: Path) -> int:
    """How many `dvc exp` experiments hang off commits other than HEAD (`dvc exp show` lists
    only HEAD's; `dvc exp show -A` lists them all): their refs are
    refs/exps/<baseline commit split 2/38>/<name>."""
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").stdout.strip()
    refs = _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    count = 0
    for ref in refs:
        parts = ref.split("/")
        if len(parts) == 5 and parts[2] + parts[3] != head:
            count += 1
    return count


def _dvc_status(repo: Path) -> dict:
    """`dvc status` of the workspace, or a one-line refusal where DVC cannot tell (its lock
    held by a running `dvc repro`, a linked file gone): stale is not assumed away."""
    try:
        from dvc.repo import Repo

        with Repo(str(repo)) as dvc_repo:
            return dvc_repo.status()
    except Exception as error:  # noqa: BLE001 (the boundary, as in RevisionFiles.read_bytes)
        raise PipelineError(f"cannot tell whether the workspace's results are current: "
                            f"`dvc status` failed ({_one_line(error)}); try again when no "
                            "other DVC command runs, or fix what it names") from None


def stale_stages(repo: Path) -> list[str]:
    """The stages `dvc status` says are not up to date (their code, params or data changed,
    or their outputs are missing or changed); an output merely absent from the cache (`dvc gc`,
    a damaged cache file) leaves its stage current."""

    def only_uncached(changes: object) -> bool:
        return isinstance(changes, list) and all(
            isinstance(change, dict) and set(change) == {"changed outs"}
            and set(change["changed outs"].values()) == {"not in cache"} for change in changes)

    return sorted(stage for stage, changes in _dvc_status(repo).items()
                  if not only_uncached(changes))


ABSENT = ("deleted", "not in cache")  # `dvc status` words for a file that is merely not here


def stages_not_made_here(repo: Path) -> list[str]:
    """The stages whose results in the workspace are not what dvc.lock says their inputs made:
    their code, params or data changed since (`dvc status`'s changed deps: modified or new),
    their command changed, or their outputs were replaced (changed outs: modified; what a
    `git checkout` of dvc.lock without `dvc checkout` leaves). A file merely absent (a clone
    that has not pulled the data) is not a mismatch: the committed results are still its
    inputs'."""

    def mismatched(changes: object) -> bool:
        if not isinstance(changes, list):
            return False
        for change in changes:
            if change == "changed command" or (isinstance(change, dict)
                                               and "changed command" in change):
                return True
            if not isinstance(change, dict):
                continue
            for kind in ("changed deps", "changed outs"):
                states = change.get(kind)
                if isinstance(states, dict) and any(state not in ABSENT
                                                    for state in states.values()):
                    return True
        return False

    return sorted(stage for stage, changes in _dvc_status(repo).items() if mismatched(changes))
