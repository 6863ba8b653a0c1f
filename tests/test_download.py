from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.artifacts import read_json
from pipeline.check_sources import check_folder
from pipeline.datasets import CsvDataset, FileSource, IdxDataset
from pipeline.formats import IDX_LABELS_MAGIC, materialise, read_idx
from pipeline.params import DownloadParams
from pipeline.sources import DownloadError, download, fetch
from tests.conftest import (
    FASHION_CLASSES,
    FASHION_SAMPLE,
    FIXTURES,
    ROOT,
    run_module,
    serve_bytes,
    serve_dropped,
    serve_error,
    serve_slow,
    serve_truncated,
)

FAST = DownloadParams(timeout_s=2, retries=2, backoff_s=0, max_total_s=30, chunk_bytes=4096)
LABELS = FIXTURES / "t10k-labels-idx1-ubyte.gz"
LABELS_SHA = "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
OTHER_LABELS = FIXTURES / "train-labels-idx1-ubyte.gz"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get(urls, tmp_path, expected: bytes, settings=FAST):
    dest = tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz"
    return download(urls, dest, sha(expected), len(expected), settings, sleep=lambda _: None)


def test_real_file_is_fetched_and_verified(http_server, tmp_path):
    body = LABELS.read_bytes()
    url = http_server.add("/a/t10k-labels-idx1-ubyte.gz", serve_bytes(body))
    fetched = get([url], tmp_path, body)
    assert fetched.path.read_bytes() == body
    assert fetched.sha256 == LABELS_SHA
    assert [p.name for p in fetched.path.parent.iterdir()] == [fetched.path.name]


def test_server_error_then_success_is_retried(http_server, tmp_path):
    body = LABELS.read_bytes()
    url = http_server.add("/f.gz", serve_error(500), serve_error(503), serve_bytes(body))
    assert get([url], tmp_path, body).path.read_bytes() == body
    assert http_server.hits("/f.gz") == 3


def test_404_moves_to_the_next_mirror_at_once(http_server, tmp_path):
    body = LABELS.read_bytes()
    http_server.add("/one/f.gz", serve_error(404))
    http_server.add("/two/f.gz", serve_bytes(body))
    fetched = get([http_server.url + "/one/f.gz", http_server.url + "/two/f.gz"], tmp_path, body)
    assert fetched.source.endswith("/two/f.gz")
    assert http_server.hits("/one/f.gz") == 1


@pytest.mark.parametrize("failure", [serve_truncated(LABELS.read_bytes(), 1000), serve_dropped()])
def test_truncated_or_dropped_transfers_are_retried(http_server, tmp_path, failure):
    body = LABELS.read_bytes()
    url = http_server.add("/f.gz", failure, serve_bytes(body))
    assert get([url], tmp_path, body).path.read_bytes() == body
    assert http_server.hits("/f.gz") == 2


def test_every_mirror_failing_lists_what_each_answered(http_server, tmp_path):
    body = LABELS.read_bytes()
    urls = [http_server.add("/a/f.gz", serve_error(404)),
            http_server.add("/b/f.gz", serve_truncated(body, 100)),
            http_server.add("/c/f.gz", serve_bytes(b"<html><body>Access denied</body></html>"))]
    with pytest.raises(DownloadError) as caught:
        get(urls, tmp_path, body)
    message = str(caught.value)
    assert "/a/f.gz: HTTP 404" in message
    assert "/b/f.gz: attempt 3: truncated (incomplete) body: 100 of 5,148" in message
    assert "/c/f.gz: the server sent an HTML/XML page, not the data file" in message
    assert http_server.hits("/b/f.gz") == FAST.retries + 1
    assert not any((tmp_path / "cache").iterdir())


def test_another_datasets_file_is_rejected_showing_both_hashes(http_server, tmp_path):
    wrong = OTHER_LABELS.read_bytes()
    expected = LABELS.read_bytes()
    url = http_server.add("/f.gz", serve_bytes(wrong))
    dest = tmp_path / "f.gz"
    with pytest.raises(DownloadError) as caught:
        download([url], dest, sha(expected), None, FAST, sleep=lambda _: None)
    assert f"sha256 {sha(wrong)}, expected {LABELS_SHA}" in str(caught.value)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_a_wrong_size_is_rejected_before_hashing(http_server, tmp_path):
    body = LABELS.read_bytes()
    url = http_server.add("/f.gz", serve_bytes(body))
    with pytest.raises(DownloadError, match="announces 5,148 bytes, but the pinned size is 5,000"):
        download([url], tmp_path / "f.gz", None, 5000, FAST, sleep=lambda _: None)
    url = http_server.add("/g.gz", serve_bytes(body))
    with pytest.raises(DownloadError, match="size 5,148 bytes, expected 6,000"):
        download([url], tmp_path / "g.gz", None, 6000, FAST, sleep=lambda _: None)


def test_a_server_slower_than_the_timeout_fails_with_a_timeout(http_server, tmp_path):
    body = LABELS.read_bytes()
    url = http_server.add("/f.gz", serve_slow(body, 1.5))
    settings = DownloadParams(timeout_s=0.3, retries=1, backoff_s=0, max_total_s=10)
    with pytest.raises(DownloadError, match="timed out"):
        get([url], tmp_path, body, settings)


def test_total_time_limit_stops_retrying(http_server, tmp_path):
    body = LABELS.read_bytes()
    url = http_server.add("/f.gz", serve_error(500))
    settings = DownloadParams(timeout_s=1, retries=20, backoff_s=0.05, max_total_s=0.2)
    with pytest.raises(DownloadError, match="HTTP 500"):
        download([url], tmp_path / "f.gz", sha(body), None, settings)
    assert http_server.hits("/f.gz") < 21


def test_a_cached_file_is_reverified_and_replaced_when_tampered(http_server, tmp_path):
    body = LABELS.read_bytes()
    url = http_server.add("/m/t10k-labels-idx1-ubyte.gz", serve_bytes(body))
    source = FileSource(url=url, sha256=LABELS_SHA)
    first = fetch(source, [], tmp_path, FAST)
    second = fetch(source, [], tmp_path, FAST)
    assert second.source.startswith("cache:") and http_server.hits(url[len(http_server.url):]) == 1
    first.path.write_bytes(b"tampered")
    third = fetch(source, [], tmp_path, FAST)
    assert third.path.read_bytes() == body and not third.source.startswith("cache:")


def test_names_are_joined_to_the_mirrors(http_server, tmp_path):
    body = LABELS.read_bytes()
    http_server.add("/m1/t10k-labels-idx1-ubyte.gz", serve_error(403))
    http_server.add("/m2/t10k-labels-idx1-ubyte.gz", serve_bytes(body))
    source = FileSource(name="t10k-labels-idx1-ubyte.gz", sha256=LABELS_SHA, size=len(body))
    fetched = fetch(source, [http_server.url + "/m1/", http_server.url + "/m2/"], tmp_path, FAST)
    assert fetched.source.endswith("/m2/t10k-labels-idx1-ubyte.gz")


def test_local_path_with_a_changed_file_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("label,p1\n0,1\n")
    with pytest.raises(DownloadError, match="changed since you pinned it"):
        fetch(FileSource(path=str(path), sha256="0" * 64), [], tmp_path, FAST)


def test_package_resource_is_found():
    source = FileSource(resource="sklearn.datasets.data:digits.csv.gz")
    fetched = fetch(source, [], None, FAST)
    assert fetched.path.name == "digits.csv.gz" and fetched.size > 10_000
    with pytest.raises(DownloadError, match="not found in package"):
        fetch(FileSource(resource="sklearn.datasets.data:nope.csv"), [], None, FAST)
    for package, reason in (("no_such_package_here", "is not installed"),
                            ("sklearn.no_such_subpackage", "is not installed"),
                            ("json.decoder", "is a module, not a package")):
        with pytest.raises(DownloadError, match=reason):
            fetch(FileSource(resource=f"{package}:x.csv"), [], None, FAST)


def test_a_package_resource_is_found_without_importing_the_package():
    """Importing sklearn to find digits.csv.gz took half of the download stage."""
    script = ("import sys; from pipeline.sources import _resource_path; "
              "path = _resource_path('sklearn.datasets.data:digits.csv.gz'); "
              "print(path.is_file(), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_real_idx_label_file_is_read():
    labels = read_idx(LABELS, IDX_LABELS_MAGIC, ())
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


def test_idx_with_the_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 1, 28, 28) + bytes(784)))
    with pytest.raises(DownloadError, match="IDX magic 2051, expected 2049"):
        read_idx(path, IDX_LABELS_MAGIC, ())


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return gzip.compress(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())


def idx_labels(labels: np.ndarray) -> bytes:
    return gzip.compress(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def test_idx_dataset_becomes_kaggle_layout_csv(http_server, tmp_path):
    sample = pd.read_csv(FASHION_SAMPLE)
    labels = sample["label"].to_numpy()
    images = sample.drop(columns="label").to_numpy(dtype=np.uint8).reshape(-1, 28, 28)
    files = {"tr-img.gz": idx_images(images[:600]), "tr-lab.gz": idx_labels(labels[:600]),
             "te-img.gz": idx_images(images[600:]), "te-lab.gz": idx_labels(labels[600:])}
    for name, body in files.items():
        http_server.add(f"/mirror/{name}", serve_bytes(body))

    def ref(name: str) -> dict:
        return {"name": name, "sha256": sha(files[name]), "size": len(files[name])}

    dataset = IdxDataset(
        format="idx", mirrors=[http_server.url + "/mirror/"], shape=(1, 28, 28),
        classes=FASHION_CLASSES,
        train={"images": ref("tr-img.gz"), "labels": ref("tr-lab.gz")},
        test={"images": ref("te-img.gz"), "labels": ref("te-lab.gz")},
    )
    out = tmp_path / "raw" / "fashion"
    materialise("fashion", dataset, out, tmp_path / "cache", FAST)
    train_csv = pd.read_csv(out / "train.csv")
    test_csv = pd.read_csv(out / "test.csv")
    assert list(train_csv.columns) == list(sample.columns)
    pd.testing.assert_frame_equal(train_csv, sample.iloc[:600].reset_index(drop=True))
    pd.testing.assert_frame_equal(test_csv, sample.iloc[600:].reset_index(drop=True))
    record = read_json(out / "source.json")
    assert record["files"]["train.csv"]["rows"] == 600
    assert record["files"]["test.csv"]["images"]["sha256"] == sha(files["te-img.gz"])


def test_idx_images_and_labels_of_different_lengths_are_refused(http_server, tmp_path):
    images = np.zeros((5, 28, 28), np.uint8)
    http_server.add("/m/i.gz", serve_bytes(idx_images(images)))
    http_server.add("/m/l.gz", serve_bytes(idx_labels(np.zeros(4))))
    pair = {"images": {"name": "i.gz"}, "labels": {"name": "l.gz"}}
    dataset = IdxDataset(format="idx", mirrors=[http_server.url + "/m/"], shape=(1, 28, 28),
                         classes=["a", "b"], train=pair, test=pair)
    with pytest.raises(DownloadError, match="5 images but 4 labels"):
        materialise("x", dataset, tmp_path / "raw" / "x", tmp_path / "cache", FAST)
    assert not (tmp_path / "raw" / "x").exists()


def test_user_csv_by_url_is_copied_and_its_hash_reported(http_server, tmp_path, capsys):
    body = FASHION_SAMPLE.read_bytes()
    url = http_server.add("/kaggle/fashion-mnist_train.csv", serve_bytes(body))
    dataset = CsvDataset(format="csv", train={"url": url}, shape=(1, 28, 28),
                         classes=FASHION_CLASSES, label_column="label")
    out = tmp_path / "raw" / "user"
    materialise("user", dataset, out, tmp_path / "cache", FAST)
    assert (out / "train.csv").read_bytes() == body
    assert f"sha256 {sha(body)}" in capsys.readouterr().out
    assert read_json(out / "source.json")["files"]["train.csv"]["sha256"] == sha(body)


def cifar_tarball(batches: dict[str, object]) -> bytes:
    """A tar.gz laid out like cifar-10-python.tar.gz, each batch pickled as given."""
    import io
    import pickle
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in batches.items():
            data = payload if isinstance(payload, bytes) else pickle.dumps(payload, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cifar_batch(rng, rows: int) -> dict:
    return {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, rows).tolist(),
            b"data": rng.integers(0, 256, (rows, 3072)).astype(np.uint8),
            b"filenames": [b"x.png"] * rows}


def cifar_dataset(url: str, body: bytes, **extra):
    from pipeline.datasets import CifarDataset

    return CifarDataset(format="cifar", archive={"url": url, "sha256": sha(body),
                                                 "size": len(body)},
                        shape=(3, 32, 32), classes=[str(i) for i in range(10)], **extra)


def test_cifar_tarball_batches_become_kaggle_layout_csv(http_server, tmp_path):
    from pipeline.datasets import CsvLayout
    from pipeline.ingest import read_image_csv

    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": cifar_batch(rng, 4) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, 3)
    body = cifar_tarball(batches)
    url = http_server.add("/kriz/cifar-10-python.tar.gz", serve_bytes(body))
    out = tmp_path / "raw" / "cifar"
    materialise("cifar", cifar_dataset(url, body), out, tmp_path / "cache", FAST)
    layout = CsvLayout(3072, 10, True, "label")
    train = read_image_csv(out / "train.csv", layout)
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(
        train.labels, sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
    test = read_image_csv(out / "test.csv", layout)
    np.testing.assert_array_equal(test.images, batches["test_batch"][b"data"])
    assert read_json(out / "source.json")["files"]["test.csv"]["rows"] == 3


def test_a_cifar_batch_that_runs_code_is_refused_and_nothing_runs(http_server, tmp_path):
    import pickle

    from pipeline.artifacts import ArtifactError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    body = cifar_tarball({"data_batch_1": pickle.dumps(Payload(), protocol=2),
                          "test_batch": cifar_batch(np.random.default_rng(1), 2)})
    url = http_server.add("/evil.tar.gz", serve_bytes(body))
    dataset = cifar_dataset(url, body, train_batches=["data_batch_1"])
    with pytest.raises(ArtifactError, match="references posix.system"):
        materialise("cifar", dataset, tmp_path / "raw" / "cifar", tmp_path / "cache", FAST)
    assert not marker.exists() and not (tmp_path / "raw" / "cifar").exists()


def test_a_cifar_archive_missing_a_batch_names_what_it_holds(http_server, tmp_path):
    body = cifar_tarball({"test_batch": cifar_batch(np.random.default_rng(2), 2)})
    url = http_server.add("/short.tar.gz", serve_bytes(body))
    with pytest.raises(DownloadError, match="no batch 'data_batch_1' in the archive "
                                            r"\(it holds test_batch\)"):
        materialise("cifar", cifar_dataset(url, body), tmp_path / "raw" / "c", tmp_path / "c",
                    FAST)


def test_two_cifar_members_with_one_batch_name_are_refused(http_server, tmp_path):
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for folder in ("cifar-10-batches-py", "other"):
            for name in ("data_batch_1", "test_batch"):
                data = pickle.dumps(cifar_batch(rng, 2), protocol=2)
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    body = buffer.getvalue()
    url = http_server.add("/twice.tar.gz", serve_bytes(body))
    dataset = cifar_dataset(url, body, train_batches=["data_batch_1"])
    with pytest.raises(DownloadError, match="two members are named 'data_batch_1' "
                                            r"\(cifar-10-batches-py/data_batch_1 and other/"):
        materialise("cifar", dataset, tmp_path / "raw" / "c", tmp_path / "c", FAST)


def test_an_oversized_cifar_member_is_refused_before_it_is_read(http_server, tmp_path,
                                                                monkeypatch):
    import pipeline.formats

    monkeypatch.setattr(pipeline.formats, "MAX_BATCH_BYTES", 1000)  # the real bound is 256 MiB
    body = cifar_tarball({"data_batch_1": cifar_batch(np.random.default_rng(4), 5),
                          "test_batch": cifar_batch(np.random.default_rng(5), 2)})
    url = http_server.add("/big.tar.gz", serve_bytes(body))
    dataset = cifar_dataset(url, body, train_batches=["data_batch_1"])
    with pytest.raises(DownloadError, match=r"data_batch_1: [\d,]+ bytes, more than a batch"):
        materialise("cifar", dataset, tmp_path / "raw" / "c", tmp_path / "c", FAST)


def test_local_sources_are_linked_for_dvc_to_hash(tmp_path):
    """DVC hashes the download stage's `sources` output through these links, so replacing the
    file a `path:` names marks the stage changed (tests/test_e2e.py checks `dvc status`)."""
    local = tmp_path / "mine.csv"
    local.write_bytes(FASHION_SAMPLE.read_bytes())
    dataset = CsvDataset(format="csv", train={"path": str(local)}, shape=(1, 28, 28),
                         classes=FASHION_CLASSES, label_column="label")
    sources = tmp_path / "sources" / "user"
    materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST, sources)
    link = sources / "train.csv"
    assert link.is_symlink() and link.resolve() == local.resolve()
    assert (sources / "README.txt").read_text().splitlines()[-1] == (
        f"train: train.csv, a link to the file of `path: {local}`")


def test_a_pinned_local_file_is_linked_so_an_edit_shows_in_dvc_status(tmp_path):
    """Pinned or not, a user's file is linked from the sources folder: DVC hashes it through
    the link, so fixing one label in it marks the download stage changed."""
    local = tmp_path / "mine.csv"
    local.write_bytes(FASHION_SAMPLE.read_bytes())
    dataset = CsvDataset(format="csv", train={"path": str(local), "sha256": sha(
        FASHION_SAMPLE.read_bytes())}, shape=(1, 28, 28), classes=FASHION_CLASSES,
        label_column="label")
    sources = tmp_path / "sources" / "user"
    materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST, sources)
    assert sorted(p.name for p in sources.iterdir()) == ["README.txt", "train.csv"]
    assert (sources / "train.csv").resolve() == local.resolve()


def test_a_pinned_local_file_that_changed_is_refused_with_its_new_pin(tmp_path):
    local = tmp_path / "mine.csv"
    local.write_bytes(FASHION_SAMPLE.read_bytes())
    dataset = CsvDataset(format="csv", train={"path": str(local), "sha256": sha(
        FASHION_SAMPLE.read_bytes())}, shape=(1, 28, 28), classes=FASHION_CLASSES,
        label_column="label")
    edited = FASHION_SAMPLE.read_bytes().replace(b"\n0,", b"\n1,", 1)
    local.write_bytes(edited)
    with pytest.raises(DownloadError) as refused:
        materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST,
                    tmp_path / "sources" / "user")
    message = str(refused.value)
    assert "the file changed since you pinned it" in message and "\n" not in message
    assert f"re-pin with sha256 {sha(edited)}" in message
    assert f"datasets.user.train.sha256: {sha(edited)}" in message


def test_a_pinned_download_is_recorded_by_its_pin_whether_cached_or_not(http_server, tmp_path):
    body = FASHION_SAMPLE.read_bytes()
    url = http_server.add("/train.csv", serve_bytes(body, headers={"ETag": '"v1"'}))
    dataset = CsvDataset(format="csv", train={"url": url, "sha256": sha(body)},
                         shape=(1, 28, 28), classes=FASHION_CLASSES, label_column="label")
    records = []
    for run in ("network", "cache"):
        sources = tmp_path / run
        materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST, sources)
        records.append((sources / "train.url.json").read_bytes())
    assert http_server.hits("/train.csv") == 1 and records[0] == records[1]
    assert read_json(tmp_path / "cache" / "train.url.json")["pinned"] is True
    assert check_folder(tmp_path / "cache", "user", FAST) == [
        "user.train: pinned by sha256, nothing to check"]


def served_dataset(http_server, body: bytes, headers: dict) -> tuple[CsvDataset, str]:
    url = http_server.add("/live.csv", serve_bytes(body, headers=headers))
    return CsvDataset(format="csv", train={"url": url}, shape=(1, 28, 28),
                      classes=FASHION_CLASSES, label_column="label"), url


@pytest.mark.parametrize("headers", [
    {"ETag": '"v1"'}, {"Last-Modified": "Mon, 23 Nov 2026 10:00:00 GMT"}, {}])
def test_a_file_that_changed_on_its_server_is_marked_for_dvc(http_server, tmp_path, headers):
    """Like `dvc update` for `dvc import-url`: ETag, else Last-Modified, else size or a re-hash.
    The record changes only when the file did, and changes back when the server does."""
    body = FASHION_SAMPLE.read_bytes()
    dataset, url = served_dataset(http_server, body, headers)
    sources = tmp_path / "sources"
    materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST, sources)
    record = sources / "train.url.json"
    original = record.read_bytes()
    assert f"train: train.url.json, downloaded from {url}" in (sources / "README.txt").read_text()
    assert check_folder(sources, "user", FAST) == ["user.train: unchanged"]
    assert record.read_bytes() == original

    newer = {key: value.replace("v1", "v2").replace("10:00", "11:00")
             for key, value in headers.items()}
    same_size = body.replace(b"\n0,", b"\n1,", 1)  # another label: same size, other content
    http_server.add("/live.csv", serve_bytes(same_size, headers=newer))
    [line] = check_folder(sources, "user", FAST)
    assert line.startswith("user.train: changed on the server (")
    assert ("ETag" in line) == ("ETag" in headers) and ("content" in line) == (not headers)
    assert read_json(record)["upstream"] and record.read_bytes() != original

    http_server.add("/live.csv", serve_bytes(body, headers=headers))
    assert check_folder(sources, "user", FAST) == ["user.train: unchanged"]
    assert record.read_bytes() == original


def test_checking_a_server_that_is_gone_is_one_clear_error(http_server, tmp_path):
    dataset, url = served_dataset(http_server, FASHION_SAMPLE.read_bytes(), {"ETag": '"v1"'})
    materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST, tmp_path / "src")
    http_server.add("/live.csv", serve_error(404))
    [line] = check_folder(tmp_path / "src", "user", FAST)
    assert line.startswith("user.train: not checked: ")
    assert "HTTP 404 Not Found when checking it for changes" in line


def test_check_sources_reports_a_broken_server_and_a_broken_record_and_exits_1(http_server,
                                                                               tmp_path):
    """Run as a user runs it: one file's server answers garbage, another's record lost its
    `source`; each is named on its line, nothing raises, and the exit status says so."""
    dataset, url = served_dataset(http_server, FASHION_SAMPLE.read_bytes(), {"ETag": '"v1"'})
    materialise("user", dataset, tmp_path / "raw", tmp_path / "cache", FAST,
                tmp_path / "src" / "user")

    def garbage(handler) -> None:
        handler.close_connection = True
        handler.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")

    http_server.add("/live.csv", garbage)
    broken = json.loads((tmp_path / "src" / "user" / "train.url.json").read_text())
    (tmp_path / "src" / "user" / "test.url.json").write_text(json.dumps(
        {k: v for k, v in broken.items() if k != "source"}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["run"]["datasets"] = ["user"]
    params["datasets"]["user"] = {**dataset.model_dump(mode="json", exclude_none=True)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_module("pipeline.check_sources", "--params", str(tmp_path / "params.yaml"),
                      "--sources", str(tmp_path / "src"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "user.train: not checked: " in done.stdout and "not valid HTTP" in done.stdout
    assert "user.test: not checked: the record names no `source` URL" in done.stdout
    assert "error: 2 downloaded file(s) could not be checked" in done.stderr


def test_download_stage_errors_are_one_line_as_dvc_runs_it(tmp_path):
    """Run as `python -m pipeline.stages.download`, a refusal is one line, not a traceback,
    and leaves no output behind."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["digits"]["train"] = {"path": str(tmp_path / "gone.csv")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_module("pipeline.stages.download", "--params", str(tmp_path / "params.yaml"),
                      "--dataset", "digits", "--out", str(tmp_path / "raw"),
                      "--cache", str(tmp_path / "cache"), "--sources", str(tmp_path / "src"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'gone.csv'} (from the dataset's `path:`): no such file"]
    assert not (tmp_path / "raw").exists() and not (tmp_path / "src").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_dataset_format_has_a_converter():
    from pipeline.datasets import FORMATS
    from pipeline.formats import CONVERTERS

    assert list(CONVERTERS) == list(FORMATS)


@pytest.mark.parametrize("name", ["données.csv", "../train.csv", "a b.csv", "/etc/passwd"])
def test_a_file_name_that_cannot_join_a_mirror_url_is_refused(name):
    """A `name:` is joined to the mirrors' URLs: printable ASCII only, no `..`, no space."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="name must be a file name relative to the mirrors"):
        FileSource(name=name)
