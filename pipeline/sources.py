"""Where dataset files come from: a URL (or mirrors), a local path, or a file inside a package.

`fetch()` makes one verified local copy of a source. Downloads stream into a staging file while
hashing, are checked for size, sha256 and content (gzip magic) and only then renamed; retries
back off exponentially with jitter on timeouts, dropped connections, truncated bodies and 5xx,
while 403/404 and wrong content move on to the next mirror at once. A cached download is
re-verified by hash on every run. Local files (`path:`, `resource:`) are linked into the
download stage's `sources` folder, which DVC hashes through the link, so replacing the file
marks the stage changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.resources
import importlib.util
import os
import random
import re
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.artifacts import disk_full, sha256_of, staging_prefix
from pipeline.datasets import FileSource, check_url
from pipeline.errors import PipelineError
from pipeline.params import DownloadParams
from pipeline.userfiles import UserFileError, kind_of, open_regular

GZIP_MAGIC = b"\x1f\x8b"
USER_AGENT = "pipeline-downloader/0.1 (+https://dvc.org)"


class DownloadError(PipelineError):
    """No source produced a file that passed every check."""


class PinMismatch(DownloadError):
    """A local file's bytes are not the ones its sha256 (or size) pin names."""

    def __init__(self, origin: Path, actual_sha256: str | None, problem: str):
        self.origin, self.actual_sha256, self.problem = origin, actual_sha256, problem
        super().__init__(f"{origin}: the file changed since you pinned it ({problem})" if
                         actual_sha256 is None else
                         f"{origin}: the file changed since you pinned it (its {problem})")


class _RetryableError(Exception):
    """A failure worth retrying on the same mirror (timeout, reset, 5xx, truncated body)."""


class _MirrorRejected(Exception):
    """A failure that retrying the same mirror cannot fix (404, 403, wrong content)."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    source: str
    sha256: str
    size: int
    validators: dict[str, str] = field(default_factory=dict)  # the server's ETag, Last-Modified


def candidate_urls(source: FileSource, mirrors: list[str]) -> list[str]:
    if source.url is not None:
        return [source.url]
    if source.name is not None:
        if not mirrors:
            raise DownloadError(
                f"file {source.name!r} is given by name but the dataset lists no mirrors; "
                "add `mirrors:` to the dataset or give a full `url:`"
            )
        return [mirror + source.name for mirror in mirrors]
    return []


def check_content(path: Path, file_name: str) -> None:
    """Reject content that cannot be what the file name promises (e.g. an HTML error page:
    no dataset file is HTML, so one is refused even where nothing is pinned)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")):
        raise _MirrorRejected("the server sent an HTML/XML page, not the data file (a login, "
                              "error or redirect page); check the URL")
    if file_name.endswith(".gz"):
        head = head[:2]
        if head != GZIP_MAGIC:
            raise _MirrorRejected(
                f"not gzip data (starts with {head!r}, expected {GZIP_MAGIC!r}); "
                "the server probably sent an error page"
            )


def verify(path: Path, expected_sha256: str | None, expected_size: int | None) -> str:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise _MirrorRejected(f"size {size:,} bytes, expected {expected_size:,}")
    digest = sha256_of(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise _MirrorRejected(f"sha256 {digest}, expected {expected_sha256}")
    return digest


def _validators(headers) -> dict[str, str]:
    """What a server says identifies a file's version: ETag and Last-Modified, as DVC's
    import-url records them."""
    found = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")}
    return {key: value for key, value in found.items() if value}


def _stream_once(url: str, part: Path, settings: DownloadParams, show_progress: bool,
                 deadline: float, max_bytes: int | None = None,
                 dest: Path | None = None) -> dict[str, str]:
    """Stream one URL into `part` (the temporary name of `dest`), giving up at `deadline`
    (time.monotonic) however slowly the bytes trickle in, and after `max_bytes` when the size
    is pinned. Returns the response's validators."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(
            request, timeout=max(0.1, min(settings.timeout_s, deadline - time.monotonic())))
    except urllib.error.HTTPError as error:
        if error.code >= 500 or error.code == 429:
            raise _RetryableError(f"HTTP {error.code} {error.reason}") from None
        raise _MirrorRejected(f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise _RetryableError(f"cannot connect: {reason}") from None
    except (http.client.HTTPException, ValueError) as error:
        # a garbage status line, too many or too long headers, a URL http.client refuses
        raise _MirrorRejected(f"the server's answer is not valid HTTP "
                              f"({type(error).__name__}: {str(error)[:120]})") from None
    with response:
        declared = response.headers.get("Content-Length")
        total = int(declared) if declared and declared.isdigit() else None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise _MirrorRejected(f"the server announces {total:,} bytes, but the pinned size "
                                  f"is {max_bytes:,}")
        received = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=Path(url).name.encode("ascii", "replace").decode(), file=sys.__stderr__,
                   disable=not show_progress, leave=False)
        try:
            with open(part, "wb") as handle:
                while True:
                    if time.monotonic() > deadline:
                        raise _RetryableError(f"too slow: {received:,} bytes when the time "
                                              f"limit (download.max_total_s) ran out")
                    try:
                        # read1 returns what has arrived (one receive at most): read(n) would
                        # wait for all n bytes, which a trickling server never sends
                        block = response.read1(settings.chunk_bytes)
                    except TimeoutError:
                        raise _RetryableError(f"read timed out after {received:,} bytes") from None
                    except http.client.IncompleteRead:
                        announced = f"{total:,}" if total is not None else "the announced"
                        raise _RetryableError(f"truncated (incomplete) body: {received:,} of "
                                              f"{announced} bytes") from None
                    except http.client.HTTPException as error:  # e.g. a 70 KB chunk-size line
                        raise _MirrorRejected(f"the server's body is not valid HTTP "
                                              f"({type(error).__name__})") from None
                    except (ConnectionError, OSError) as error:
                        raise _RetryableError(
                            f"connection dropped after {received:,} bytes ({type(error).__name__})"
                        ) from None
                    if not block:
                        break
                    try:
                        handle.write(block)
                    except OSError as error:
                        raise disk_full(error, dest or part, received) or error from None
                    received += len(block)
                    bar.update(len(block))
                    if max_bytes is not None and received > max_bytes:
                        raise _MirrorRejected(f"more than the pinned size of {max_bytes:,} "
                                              "bytes; stopped reading")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            bar.close()
    if total is not None and received != total:
        raise _RetryableError(f"truncated (incomplete) body: {received:,} of {total:,} announced "
                              "bytes")
    return _validators(response.headers)


def download(
    urls: list[str],
    dest: Path,
    sha256: str | None,
    size: int | None,
    settings: DownloadParams,
    show_progress: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetched:
    """Fetch the first mirror whose bytes pass every check into `dest` (atomically)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{staging_prefix(dest)}part.tmp")
    attempts: list[str] = []
    started = time.monotonic()
    try:
        for url in urls:
            for attempt in range(settings.retries + 1):
                try:
                    validators = _stream_once(url, part, settings, show_progress,
                                              started + settings.max_total_s, size, dest)
                    check_content(part, dest.name)
                    digest = verify(part, sha256, size)
                except _RetryableError as error:
                    attempts.append(f"{url}: attempt {attempt + 1}: {error}")
                    elapsed = time.monotonic() - started
                    if attempt == settings.retries or elapsed >= settings.max_total_s:
                        break
                    delay = settings.backoff_s * (2**attempt) * (0.5 + random.random())
                    sleep(min(delay, max(0.0, settings.max_total_s - elapsed)))
                    continue
                except _MirrorRejected as error:
                    attempts.append(f"{url}: {error}")
                    break
                os.replace(part, dest)
                return Fetched(dest, url, digest, dest.stat().st_size, validators)
            if time.monotonic() - started >= settings.max_total_s:
                attempts.append(f"gave up: total time limit of {settings.max_total_s:g} s reached")
                break
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    tried = "\n  ".join(attempts) or "(no URL to try)"
    last = attempts[-1].split(": ", 1)[-1] if attempts else "no URL to try"
    raise DownloadError(
        f"could not fetch {dest.name} ({last}); every source failed:\n  {tried}\n"
        "Check the URL and your connection, or download the file yourself and point the "
        "dataset's `path:` at it."
    )


def _refuse_or_remove(path: Path) -> None:
    """Remove a link or an empty folder planted in the download cache; refuse anything else."""
    if path.is_symlink() or path.is_dir() and not any(path.iterdir()):
        print(f"cached {path} is not a regular file (a link or an empty folder); it is replaced "
              "by a fresh download")
        path.unlink() if path.is_symlink() else path.rmdir()
    else:
        raise DownloadError(f"{path}: in the download cache but not a regular file; move it "
                            "away and run again")


def _resource_path(resource: str) -> Path:
    package, _, name = resource.partition(":")
    # found on disk without running the packages' code, whose import is most of the download
    # stage's time (docs/performance.md, "Hand-rolled replacements")
    top, *inner = package.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise DownloadError(f"resource {resource!r}: package {top!r} is not installed")
    path = next((Path(folder, *inner, name) for folder in spec.submodule_search_locations or ()
                 if Path(folder, *inner, "__init__.py").is_file()), None)
    if path is None:  # a namespace or zipped package: let importlib find it
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise DownloadError(
                f"resource {resource!r}: package {package!r} is not installed"
            ) from None
        except TypeError:
            raise DownloadError(f"resource {resource!r}: {package!r} is a module, not a package; "
                                "name the package folder that holds the file") from None
        path = Path(str(root / name))
    if not path.is_file():
        raise DownloadError(f"resource {resource!r}: {name!r} not found in package {package!r}")
    return path


def cache_name(url: str) -> str:
    """A safe file name for a URL's download: its last path segment when that is a plain name,
    else one derived from the URL (a URL ending in `/..` or `/` names no file)."""
    segment = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,119}", segment):
        return segment
    return f"download-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def check_readable_file(path: Path) -> None:
    """Refuse, with the real reason, a local source that is not a readable regular file (a
    folder, a FIFO, a device, a socket, a kernel file under /proc or /sys)."""
    where = f"{path} (from the dataset's `path:`)"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DownloadError(f"{where}: no such file") from None
    except OSError as error:  # a symlink loop, a name too long, a path through a file, ...
        raise DownloadError(f"{where}: cannot be opened ({error.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DownloadError(f"{where}: is a folder; point `path:` at the CSV file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise DownloadError(f"{where}: is not a regular file ({kind_of(info.st_mode)}); "
                            "point `path:` at a CSV file")
    if not os.access(path, os.R_OK):
        raise DownloadError(f"{where}: permission denied; make the file readable")
    try:
        with open_regular(path, "CSV file"):
            pass
    except UserFileError as error:
        raise DownloadError(f"{where}: {str(error).removeprefix(f'{path}: ')}; point `path:` at "
                            "a CSV file") from None


def local_origin(source: FileSource) -> Path | None:
    """The local file a `path:` or `resource:` source names; None for downloaded sources."""
    if source.path is not None:
        return Path(source.path).expanduser()
    if source.resource is not None:
        return _resource_path(source.resource)
    return None


def fetch(
    source: FileSource,
    mirrors: list[str],
    cache_dir: Path,
    settings: DownloadParams,
    show_progress: bool = False,
) -> Fetched:
    """Make one verified local copy of `source` in `cache_dir` and return where it is."""
    origin = local_origin(source)
    if origin is not None:
        check_readable_file(origin)
        try:
            digest = verify(origin, source.sha256, source.size)
        except _MirrorRejected as error:
            actual = sha256_of(origin) if source.sha256 is not None else None
            raise PinMismatch(origin, actual, str(error)) from None
        except OSError as error:
            raise DownloadError(f"{origin}: cannot read it ({error.strerror})") from None
        label = str(origin) if source.path is not None else f"resource:{source.resource}"
        return Fetched(origin, label, digest, origin.stat().st_size)

    urls = candidate_urls(source, mirrors)
    dest = cache_dir / cache_name(urls[0])
    if dest.is_symlink() or dest.exists() and not dest.is_file():
        _refuse_or_remove(dest)
    if dest.exists() and source.sha256 is not None:
        try:
            digest = verify(dest, source.sha256, source.size)
            return Fetched(dest, f"cache:{dest}", digest, dest.stat().st_size)
        except _MirrorRejected as error:
            print(f"cached {dest} failed verification ({error}); downloading again")
    return download(urls, dest, source.sha256, source.size, settings, show_progress)


def url_record(source: FileSource, fetched: Fetched) -> dict:
    """What the download stage keeps about a downloaded file, for `upstream_change` to compare
    with later. A pinned file (sha256 given) cannot change unnoticed: its record holds only the
    pin, so it reads the same whether the file came from the cache or the network."""
    if source.sha256 is not None:
        return {"source": source.url or source.name, "sha256": source.sha256, "pinned": True}
    return {"source": fetched.source, "sha256": fetched.sha256, "bytes": fetched.size,
            **fetched.validators}


def upstream_change(record: dict, settings: DownloadParams) -> str | None:
    """Why the file a record describes has changed on its server, or None if it has not: the
    ETag, else Last-Modified, else the size the server announces; a server that gives none of
    them is downloaded again and hashed (what `dvc update` does for `dvc import-url`)."""
    url = record.get("source")
    if not isinstance(url, str) or not isinstance(record.get("sha256"), str):
        raise DownloadError("the record names no `source` URL and `sha256`; it was not written "
                            "by the download stage: run `dvc repro` to write it again")
    try:
        check_url(url, "the recorded source")
    except ValueError as error:
        raise DownloadError(f"{error}; run `dvc repro` to write the record again") from None
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    now: dict[str, str] = {}
    length = None
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            now = _validators(response.headers)
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError as error:
        if error.code not in (405, 501):  # a server that does not answer HEAD is re-hashed
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason} when checking it "
                                "for changes; is the URL still right?") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise DownloadError(f"{url}: cannot connect to check it for changes "
                            f"({getattr(error, 'reason', error)})") from None
    except (http.client.HTTPException, ValueError) as error:
        raise DownloadError(f"{url}: the server's answer is not valid HTTP "
                            f"({type(error).__name__}: {str(error)[:120]})") from None
    for key, name in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        if key in record and key in now:
            return None if record[key] == now[key] else \
                f"{name} {record[key]} is now {now[key]}"
    if length and length.isdigit() and isinstance(record.get("bytes"), int) \
            and int(length) != record["bytes"]:
        return f"size {record['bytes']:,} bytes is now {int(length):,}"
    with tempfile.TemporaryDirectory() as scratch:
        fetched = download([url], Path(scratch) / "check", None, None, settings)
        if fetched.sha256 != record["sha256"]:
            return f"its content changed (sha256 {record['sha256'][:12]}... is now " \
                   f"{fetched.sha256[:12]}...)"
    return None
