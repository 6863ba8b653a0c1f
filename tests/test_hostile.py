"""Hostile and tricky inputs, each fed through the entry point a user runs (`python -m
pipeline.stages.X` as DVC runs it): refused with one line that names the place and the fix, in
bounded memory and time, leaving nothing half-written behind."""

from __future__ import annotations

import copy
import gzip
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, run_module, serve_bytes

# Each test starts the command a user runs (a process importing torch, 1-3 s): left to
# `make test`, out of `make check`'s edit loop
pytestmark = pytest.mark.slow

TOY = {"format": "csv", "train": {"path": "unused.csv"}, "header": True,
       "label_column": "label", "shape": [1, 2, 2], "classes": ["a", "b", "c"]}
HEADER = b"label,p1,p2,p3,p4\n"


def rows(count: int = 30) -> bytes:
    return b"".join(b"%d,%d,0,255,7\n" % (i % 3, i) for i in range(count))


def write_params(folder: Path, dataset: dict | None = None, **sections) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["toy"] = copy.deepcopy(dataset or TOY)
    params["run"]["datasets"] = ["toy"]
    for key, value in sections.items():
        params[key] = {**params.get(key, {}), **value}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def prepare(tmp_path: Path, body: bytes, name: str = "train.csv", dataset: dict | None = None,
            limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """The prepare stage on one raw file, optionally under an address-space limit."""
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / name).write_bytes(body)
    args = ["--params", str(write_params(tmp_path, dataset)), "--dataset", "toy",
            "--raw", str(raw), "--out", str(tmp_path / "prepared")]
    if limit_bytes is None:
        return run_module("pipeline.stages.prepare", *args)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)


def refused(done: subprocess.CompletedProcess, *parts: str) -> str:
    """The run failed with exactly one `error:` line holding every part, and no traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("error: "), done.stderr
    for part in parts:
        assert part in done.stderr, (part, done.stderr)
    return done.stderr


def nothing_left(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers and not (folder / "prepared").exists(), leftovers


# --- numbers: only ASCII [+-]?[0-9]+ is an integer cell --------------------------------------

@pytest.mark.parametrize(("cell", "kind"), [
    (b"2_5", "non-numeric value"), ("\u0663".encode(), "non-ASCII value"),
    ("\uff13".encode(), "non-ASCII value"), (b"1e2", "number in exponent notation"),
    (b"1.5", "fractional value"), (b"0x1f", "non-numeric value"), (b"nan", "non-numeric"),
])
def test_cells_that_python_int_would_take_are_not_integers(tmp_path, cell, kind):
    done = prepare(tmp_path, HEADER + rows(6) + b"1,3," + cell + b",4,5\n")
    refused(done, "train.csv, line 8, column 3 ('p2')", kind, "digits 0-9")
    nothing_left(tmp_path)


def test_a_25_digit_value_is_out_of_range_not_an_overflow(tmp_path):
    done = prepare(tmp_path, HEADER + rows(6) + b"1,3," + b"9" * 25 + b",4,5\n")
    refused(done, "line 8, column 3", "is outside 0..255")


def test_a_25_digit_label_is_not_a_class(tmp_path):
    done = prepare(tmp_path, HEADER + b"9" * 25 + b",1,2,3,4\n" + rows(6))
    refused(done, "line 2, column 1 ('label')", "is not a class")


# --- encodings and line endings ---------------------------------------------------------------

def test_a_utf16_file_is_named_as_such(tmp_path):
    text = (HEADER + rows(6)).decode()
    refused(prepare(tmp_path, text.encode("utf-16")), "NUL bytes", "UTF-16", "iconv")


def test_latin1_bytes_in_the_header_are_named(tmp_path):
    body = b"label,p\xe91,p2,p3,p4\n" + rows(6)
    refused(prepare(tmp_path, body), "line 1: not UTF-8 text (byte 0xe9 at position 8)",
            "iconv -f latin1")


def test_latin1_bytes_in_a_row_are_named(tmp_path):
    body = HEADER + rows(6) + b"1,2,3,4,\xb5\n"
    refused(prepare(tmp_path, body), "line 8: byte 0xb5", "not UTF-8", "iconv")


def test_lone_cr_line_endings_are_named(tmp_path):
    body = (HEADER + rows(6)).replace(b"\n", b"\r")
    refused(prepare(tmp_path, body), "lone CR", "tr ")


def test_crlf_bom_gzip_and_blank_lines_still_pass(tmp_path):
    body = b"\xef\xbb\xbf" + (HEADER + rows(30)).replace(b"\n", b"\r\n") + b"\r\n\r\n"
    done = prepare(tmp_path, gzip.compress(body), name="train.csv.gz")
    assert done.returncode == 0, done.stderr
    assert "toy: train 19, valid 5, test 6 rows" in done.stdout


# --- memory and time are bounded -----------------------------------------------------------

LIMIT = 1_500_000_000  # address space for a prepare process: imports take ~1 GB of it


def test_one_50_mb_line_is_refused_in_bounded_memory(tmp_path):
    body = gzip.compress(HEADER + b"1," * (25 << 20), compresslevel=1)
    done = prepare(tmp_path, body, name="train.csv.gz", limit_bytes=LIMIT)
    refused(done, "line 2: longer than", "bytes with no line break", "check `shape`")


@pytest.mark.slow
def test_200_mb_of_blank_lines_are_refused_in_bounded_memory(tmp_path):
    body = gzip.compress(HEADER + b"\n" * (200 << 20), compresslevel=1)
    done = prepare(tmp_path, body, name="train.csv.gz", limit_bytes=LIMIT)
    refused(done, "no data rows")


def test_a_truncated_gzip_names_the_file(tmp_path):
    body = gzip.compress(HEADER + rows(2000))
    refused(prepare(tmp_path, body[: len(body) // 2], name="train.csv.gz"),
            "train.csv.gz: cannot read", "truncated or corrupt")


def test_a_corrupt_gzip_names_the_file(tmp_path):
    body = bytearray(gzip.compress(HEADER + rows(2000)))
    body[40:60] = b"\xff" * 20
    refused(prepare(tmp_path, bytes(body), name="train.csv.gz"), "train.csv.gz: cannot read")


def test_a_huge_declared_shape_is_refused_by_params(tmp_path):
    dataset = {**TOY, "shape": [1, 100000, 100000]}
    refused(prepare(tmp_path, HEADER, dataset=dataset),
            "datasets.toy.shape", "1x100000x100000 is more than 4,194,304")
    dataset = {**TOY, "shape": [3, 4096, 4096]}
    refused(prepare(tmp_path, HEADER, dataset=dataset), "3x4096x4096 is more than 4,194,304")


# --- splits -----------------------------------------------------------------------------------

def test_a_class_with_one_row_is_named_with_the_file(tmp_path):
    body = HEADER + b"".join(b"%d,1,2,3,4\n" % (i % 2) for i in range(20)) + b"2,1,2,3,4\n"
    refused(prepare(tmp_path, body), "train.csv: class 'c' has 1 row", "stratified")


def test_a_three_row_file_is_explained(tmp_path):
    refused(prepare(tmp_path, HEADER + rows(3)), "train.csv: class", "has 1 row")


def test_a_train_file_missing_declared_classes_is_refused(tmp_path):
    body = HEADER + b"".join(b"0,%d,2,3,4\n" % i for i in range(20))
    refused(prepare(tmp_path, body), "no rows of 2 of the 3 declared classes ('b', 'c')",
            "remove them from the dataset's `classes`")


# --- params.yaml --------------------------------------------------------------------------

def params_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "params.yaml").write_text(text)
    done = run_module("pipeline.stages.prepare", "--params", str(tmp_path / "params.yaml"),
                      "--dataset", "toy", "--raw", str(tmp_path), "--out", str(tmp_path / "o"))
    return refused(done)


def base_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["toy"] = copy.deepcopy(TOY)
    return params


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "epochs", True, "train.epochs = True: Input should be a valid integer"),
    ("train", "amp", "yes", "train.amp = 'yes': Input should be a valid boolean"),
    ("train", "epochs", 1_000_000_000, "less than or equal to 100000"),
    ("train", "batch_size", 2**40, "less than or equal to 1048576"),
    ("train", "seed", 2**40, "less than or equal to 4294967295"),
    ("download", "timeout_s", 1e9, "less than or equal to 3600"),
])
def test_params_are_strict_and_bounded(tmp_path, section, key, value, expected):
    params = base_params()
    params[section][key] = value
    assert expected in params_error(tmp_path, yaml.safe_dump(params))


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace(
        "\n  epochs: 60", "\n  epochs: 60\n  epochs: 3", 1)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("  epochs: 3"))
    assert f"line {line}: the key 'epochs' is given twice in one mapping (first at line " \
        f"{line - 1})" in params_error(tmp_path, text)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
             for i in range(8)]
    text = (ROOT / "params.yaml").read_text() + "\n".join(bomb) + "\n"
    assert "the alias *a refers to an anchor" in params_error(tmp_path, text)


def test_a_300_character_name_is_refused_as_a_name(tmp_path):
    params = base_params()
    params["datasets"]["d" * 300] = copy.deepcopy(TOY)
    assert "must start with a letter" in params_error(tmp_path, yaml.safe_dump(params))


def test_a_params_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "p.yaml").write_bytes(b"run:\n  datasets: [caf\xe9]\n")
    done = run_module("pipeline.stages.prepare", "--params", str(tmp_path / "p.yaml"),
                      "--dataset", "toy", "--raw", str(tmp_path), "--out", str(tmp_path / "o"))
    refused(done, "p.yaml: not UTF-8 text")


# --- local paths ------------------------------------------------------------------------------

def download(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    params = write_params(tmp_path, {**TOY, "train": {"path": path}})
    return run_module("pipeline.stages.download", "--params", str(params), "--dataset", "toy",
                      "--out", str(tmp_path / "raw"), "--cache", str(tmp_path / "cache"),
                      "--sources", str(tmp_path / "src"))


def test_a_folder_given_as_path_is_named_a_folder(tmp_path):
    refused(download(tmp_path, str(tmp_path)), "is a folder; point `path:` at the CSV file")


def test_a_symlink_loop_is_named(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(download(tmp_path, str(tmp_path / "loop")), "cannot be opened",
            "Too many levels of symbolic links")


def test_a_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    refused(download(tmp_path, str(tmp_path / "pipe.csv")), "is not a regular file")


# --- downloads ------------------------------------------------------------------------------

def serve_trickle(body: bytes, every_s: float):
    """Announce the whole body, then send one byte at a time."""
    def action(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body:
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                return
            time.sleep(every_s)
    return action


def serve_unannounced(body: bytes):
    """A body with no Content-Length: the client only learns its size by reading it."""
    def action(handler) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True
    return action


def download_url(tmp_path: Path, train: dict, **download_settings) -> subprocess.CompletedProcess:
    settings = {"retries": 0, "backoff_s": 0, **download_settings}
    params = write_params(tmp_path, {**TOY, "train": train}, download=settings)
    return run_module("pipeline.stages.download", "--params", str(params), "--dataset", "toy",
                      "--out", str(tmp_path / "raw"), "--cache", str(tmp_path / "cache"),
                      "--sources", str(tmp_path / "src"))


def test_a_trickling_server_is_given_up_on_at_the_time_limit(http_server, tmp_path):
    url = http_server.add("/slow.csv", serve_trickle(HEADER + rows(100), every_s=0.05))
    started = time.monotonic()
    done = download_url(tmp_path, {"url": url}, timeout_s=5, max_total_s=2)
    refused(done, "too slow", "download.max_total_s")
    assert time.monotonic() - started < 15
    assert not (tmp_path / "raw").exists() and not list(tmp_path.rglob("*.tmp"))


def test_a_body_larger_than_the_pinned_size_is_not_read_to_the_end(http_server, tmp_path):
    body = HEADER + rows(200_000)  # ~3 MB where 100 bytes are pinned
    url = http_server.add("/big.csv", serve_unannounced(body))
    done = download_url(tmp_path, {"url": url, "size": 100})
    refused(done, "more than the pinned size of 100 bytes; stopped reading")
    url = http_server.add("/announced.csv", serve_bytes(body))
    refused(download_url(tmp_path, {"url": url, "size": 100}),
            f"the server announces {len(body):,} bytes, but the pinned size is 100")


def test_an_html_page_from_an_unpinned_url_is_refused(http_server, tmp_path):
    page = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
    url = http_server.add("/data.csv", serve_bytes(page))
    refused(download_url(tmp_path, {"url": url}), "sent an HTML/XML page, not the data file")


def test_a_url_ending_in_dot_dot_gets_a_safe_cache_name(http_server, tmp_path):
    url = http_server.add("/files/..", serve_bytes(HEADER + rows(30)))
    done = download_url(tmp_path, {"url": url})
    assert done.returncode == 0, done.stderr
    cached = [p.name for p in (tmp_path / "cache" / "toy").iterdir()]
    assert len(cached) == 1 and cached[0].startswith("download-")


# --- leftovers after a kill -------------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_every_stage_run_sweeps_what_killed_runs_left(tmp_path):
    """A killed stage's staging folder is removed by the next run of any stage, even when DVC
    does not re-run the killed one; one a live process still writes is kept, and so are a
    user's files and another host's temporaries (a project folder shared by machines)."""
    from pipeline.artifacts import staging_prefix

    project = tmp_path / "project"
    (project / "data/raw").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    dead = dead_pid()
    ours = staging_prefix(Path("toy")).replace(f"-{os.getpid()}.", f"-{dead}.")
    stale_dir = project / "data/raw" / f"{ours}abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "train.csv").write_bytes(rows(100))
    stale_part = project / "data" / (staging_prefix(Path("train.csv.gz")).replace(
        f"-{os.getpid()}.", f"-{dead}.") + "part.tmp")
    stale_part.write_bytes(b"partial")
    live = project / "data/raw" / f"{staging_prefix(Path('toy'))}def456.tmp"
    live.mkdir()
    users = project / "data" / f".photos.{dead}.summer.tmp"  # fits the old pattern; a user's
    users.mkdir()
    elsewhere = project / "data" / f".toy.pipeline-another-host-{dead}.x.tmp"
    elsewhere.mkdir()
    done = run_module("pipeline.stages.report", "--params", str(project / "missing.yaml"),
                      "--prepared", "p", "--evaluation", "e", "--live", "l", "--timing", "t",
                      "--sweeps", "s", "--out", "o.html", "--run-script", "r.js", cwd=project)
    refused(done, "missing.yaml: cannot read the parameters file")
    assert not stale_dir.exists() and not stale_part.exists() and live.exists()
    assert users.exists() and elsewhere.exists()


def test_a_read_only_tool_sweeps_nothing(tmp_path):
    from pipeline.artifacts import staging_prefix

    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    stale = project / staging_prefix(Path("x")).replace(f"-{os.getpid()}.", f"-{dead_pid()}.")
    stale = stale.with_name(stale.name + "a.tmp")
    stale.mkdir()
    run_module("pipeline.compare", "--params", str(project / "missing.yaml"), cwd=project)
    assert stale.exists()


# --- predict: images ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> Path:
    """A model that tells 'left' (bright left half) from 'right' on 1x4x4 images."""
    from pipeline.architectures import Linear
    from pipeline.checkpoint import Checkpoint
    from pipeline.engine import fit
    from pipeline.params import TrainSettings
    from tests.conftest import CPU, toy_splits

    result = fit(Linear(), TrainSettings(epochs=8, batch_size=32, lr=0.05), toy_splits(), CPU,
                 seed=0, log=lambda _: None)
    path = tmp_path_factory.mktemp("model") / "toy.pt"
    Checkpoint(Linear(), (1, 4, 4), ["left", "right"], [result.state_dict],
               result.initial_state_dict).save(path)
    return path


def predict(model: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module("pipeline.predict", "--checkpoint", str(model), *args)


def halves(left: float, right: float, size: int = 16) -> np.ndarray:
    pixels = np.full((size, size), right, dtype=np.float64)
    pixels[:, : size // 2] = left
    return pixels


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path, toy_model):
    from PIL import Image

    from pipeline.predict import load_image

    path = tmp_path / "deep.png"
    Image.fromarray(halves(20000, 0).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path, (1, 4, 4), invert="no")
    assert 70 <= image[0, :, :2].mean() <= 86 and image[0, :, 2:].max() < 10  # 20000/65535*255
    done = predict(toy_model, str(path), "--invert", "no")
    assert done.returncode == 0 and done.stdout.startswith(f"{path}: left "), done.stderr


def test_dark_ink_on_a_transparent_background_is_not_a_blank_image(tmp_path, toy_model):
    from PIL import Image

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8, 3] = 255  # opaque black ink on the left, fully transparent elsewhere
    path = tmp_path / "drawing.png"
    Image.fromarray(rgba, "RGBA").save(path)
    done = predict(toy_model, str(path))
    assert done.returncode == 0 and done.stdout.startswith(f"{path}: left "), done.stderr


def test_an_animated_gif_is_refused_not_read_from_its_first_frame(tmp_path, toy_model):
    from PIL import Image

    frames = [Image.fromarray(halves(255, 0).astype(np.uint8)),
              Image.fromarray(halves(0, 255).astype(np.uint8))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    refused(predict(toy_model, str(path)), "anim.gif: an animated image with 2 frames")


def test_a_decompression_bomb_is_refused_with_the_file_name(tmp_path, toy_model):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path)  # 400 million pixels in a few kB
    assert path.stat().st_size < 200_000
    refused(predict(toy_model, str(path)), "bomb.png: refused as a decompression bomb")


def test_out_naming_a_folder_is_refused_before_anything_runs(tmp_path, toy_model):
    refused(predict(toy_model, str(tmp_path), "--out", str(tmp_path)),
            f"--out {tmp_path}: is a folder")


def test_the_report_stage_names_a_missing_evaluation(tmp_path):
    """The report reads only files; one that is missing is named with the way to make it."""
    from pipeline.artifacts import save_arrays, write_json
    from tests.conftest import toy_splits

    params = write_params(tmp_path, run={"datasets": ["toy"], "models": ["linear"]})
    prepared = tmp_path / "prepared" / "toy"
    prepared.mkdir(parents=True)
    for name, split in toy_splits().items():
        save_arrays(prepared / f"{name}.pkl", {"images": split.images, "labels": split.labels,
                                               "classes": split.classes})
    write_json(prepared / "quality.json", {"classes": ["left", "right"], "shape": [1, 4, 4]})
    done = run_module("pipeline.stages.report", "--params", str(params),
                      "--prepared", str(tmp_path / "prepared"),
                      "--evaluation", str(tmp_path / "evaluation"), "--live", str(tmp_path / "l"),
                      "--timing", str(tmp_path / "t"), "--sweeps", str(tmp_path / "s"),
                      "--out", str(tmp_path / "index.html"),
                      "--run-script", str(tmp_path / "run.js"))
    refused(done, f"{tmp_path / 'evaluation' / 'toy' / 'linear.pkl'}: missing; run the stage "
            "that writes it (dvc repro)")
    assert not (tmp_path / "index.html").exists() and not (tmp_path / "run.js").exists()


def test_what_users_write_in_yaml_still_reads_as_meant(tmp_path):
    """Strict types, but `lr: 1e-3` (a float in YAML 1.2 and to DVC) and numeric class names
    are read as meant."""
    from pipeline.params import load_params

    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.02 ", "  lr: 2e-2 ", 1)
    text = text.replace('classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]',
                        "classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", 1)
    assert "lr: 2e-2" in text and "classes: [0, 1, 2" in text
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.train.lr == 0.02 and params.dataset("digits").classes[:2] == ["0", "1"]


def test_predict_names_a_checkpoint_it_cannot_use(tmp_path, toy_model):
    import torch

    torch.save({"state_dict": {}}, tmp_path / "old.pt")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(halves(255, 0).astype(np.uint8)).save(image)
    refused(run_module("pipeline.predict", "--checkpoint", str(tmp_path / "old.pt"), str(image)),
            "old.pt: not a checkpoint written by this pipeline's train stage")


def test_a_semicolon_separated_file_is_named_as_such(tmp_path):
    body = (HEADER + rows(10)).replace(b",", b";")
    refused(prepare(tmp_path, body), "the header has 1 columns",
            "separated by semicolons, not commas")


def test_leading_zeros_are_still_the_number(tmp_path):
    body = HEADER + rows(30) + b"1," + b"0" * 40 + b"7,0,0,0\n"
    done = prepare(tmp_path, body)
    assert done.returncode == 0, done.stderr


def test_an_idx_header_that_promises_too_much_is_refused_without_reading_it(tmp_path):
    import struct

    from pipeline.formats import IDX_IMAGES_MAGIC, read_idx
    from pipeline.sources import DownloadError

    bomb = tmp_path / "images.gz"
    header = struct.pack(">IIII", IDX_IMAGES_MAGIC, 4_000_000_000, 28, 28)
    bomb.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(DownloadError, match="promises 3,136,000,000,000 bytes, more than"):
        read_idx(bomb, IDX_IMAGES_MAGIC, (28, 28))
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(struct.pack(">IIII", IDX_IMAGES_MAGIC, 10, 28, 28)
                                    + bytes(28 * 28 * 10 + 50)))
    with pytest.raises(DownloadError, match=r"IDX body has 7,841\+ bytes, header promises 7,840"):
        read_idx(short, IDX_IMAGES_MAGIC, (28, 28))
