"""Hostile files, round three: special files where a user's path goes, links planted where an
output folder goes, outputs that would replace what is not the pipeline's, and output modes.
Each through the entry point a user runs; refused in one line, in bounded time, nothing left."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, run_module, serve_bytes
from tests.test_hostile import (
    HEADER,
    TOY,
    download,
    download_url,
    params_error,
    prepare,
    refused,
    rows,
    write_params,
)

# Each test starts the command a user runs (a process importing torch, 2-4 s): left to
# `make test`, out of `make check`'s edit loop
pytestmark = pytest.mark.slow


def test_a_kernel_file_as_a_source_is_refused_and_leaves_nothing(tmp_path):
    done = download(tmp_path, "/proc/self/environ")
    refused(done, "/proc/self/environ", "a kernel file made on read")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "src").exists()


@pytest.mark.parametrize("kind", ["device", "fifo", "kernel"])
def test_a_params_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    params = tmp_path / "params.yaml"
    if kind == "device":
        params.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(params)  # no writer: opening it for reading would wait forever
    else:
        params.symlink_to("/proc/self/status")
    done = run_module("pipeline.stages.prepare", "--params", str(params), "--dataset", "toy",
                      "--raw", str(tmp_path), "--out", str(tmp_path / "out"))
    expected = {"device": "is a character device", "fifo": "is a named pipe (FIFO)",
                "kernel": "a kernel file made on read"}[kind]
    refused(done, f"{params}: cannot read the parameters file", expected)


def test_an_output_folder_replaced_by_a_link_outside_is_refused_and_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    prepared = tmp_path / "prepared"
    prepared.symlink_to(outside)
    done = prepare(tmp_path, HEADER + rows(60))
    refused(done, f"{prepared}: is a symbolic link (to {outside})", f"rm {prepared}")
    assert (outside / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert prepared.is_symlink()


def test_an_output_path_holding_a_special_file_is_not_replaced(tmp_path):
    """`pipeline-predict --out` at a FIFO (as at /dev/null): refused, the node left as it was."""
    from PIL import Image

    from pipeline.architectures import Linear
    from pipeline.checkpoint import Checkpoint
    from pipeline.models import build

    model = build(Linear(), (1, 4, 4), 2)
    Checkpoint(Linear(), (1, 4, 4), ["a", "b"], [model.state_dict()], model.state_dict(),
               None, "linear").save(tmp_path / "m.pt")
    Image.new("L", (4, 4), 255).save(tmp_path / "x.png")
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "x.png"),
                           "--checkpoint", str(tmp_path / "m.pt"), "--out", str(fifo)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    refused(done, f"{fifo}: is a device, pipe or socket, not a file this pipeline may replace")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_outputs_get_the_modes_a_plain_write_gives(tmp_path):
    """Built under private temporary names, swapped in with the umask's modes: a report copied
    to a web server or a shared folder is readable by others."""
    source = tmp_path / "train.csv"
    source.write_bytes(HEADER + rows(60))
    params = write_params(tmp_path, {**TOY, "train": {"path": str(source)}})
    command = [sys.executable, "-m", "pipeline.stages.download", "--params", str(params),
               "--dataset", "toy", "--out", str(tmp_path / "raw"), "--cache",
               str(tmp_path / "cache"), "--sources", str(tmp_path / "src")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=lambda: os.umask(0o022))
    assert done.returncode == 0, done.stderr
    for folder in (tmp_path / "raw", tmp_path / "src"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    for name in ("train.csv", "source.json"):
        assert stat.S_IMODE((tmp_path / "raw" / name).stat().st_mode) == 0o644, name


# --- checkpoints --------------------------------------------------------------------------------

def toy_checkpoint(tmp_path: Path, name: str = "m.pt", **changes) -> Path:
    """A 1x4x4, 2-class linear checkpoint's payload, saved with `changes` applied."""
    import torch

    from pipeline.architectures import Linear
    from pipeline.checkpoint import FORMAT_VERSION
    from pipeline.models import build

    state = build(Linear(), (1, 4, 4), 2).state_dict()
    payload = {"format": FORMAT_VERSION, "architecture": Linear().model_dump(mode="json"),
               "input_shape": [1, 4, 4], "classes": ["a", "b"], "state_dicts": [state],
               "initial_state_dict": state, "dataset": None, "model": "linear", "run": {}}
    payload.update(changes)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def predict(tmp_path: Path, checkpoint: Path) -> subprocess.CompletedProcess:
    from PIL import Image

    Image.new("L", (4, 4), 255).save(tmp_path / "x.png")
    return subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "x.png"),
                           "--checkpoint", str(checkpoint)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_non_finite_weights_are_refused_by_predict_and_evaluate(tmp_path):
    import torch

    from pipeline.artifacts import save_arrays

    (tmp_path / "models").mkdir()
    bad = toy_checkpoint(tmp_path / "models", "linear.pt")
    payload = torch.load(bad, weights_only=True)
    payload["state_dicts"][0]["fc.weight"][0, 3] = float("nan")
    torch.save(payload, bad)
    refused(predict(tmp_path, bad), "seed copy 0: the weights 'fc.weight' hold NaN or infinite",
            "retrain it")
    save_arrays(tmp_path / "test.pkl", {"images": np.zeros((3, 1, 4, 4), np.uint8),
                                        "labels": np.zeros(3, np.int64), "classes": ["a", "b"]})
    params = write_params(tmp_path, run={"datasets": ["toy"], "models": ["linear"]})
    done = run_module("pipeline.stages.evaluate", "--params", str(params), "--checkpoints",
                      str(tmp_path / "models"), "--test", str(tmp_path / "test.pkl"),
                      "--out", str(tmp_path / "evaluation"))
    refused(done, "linear.pt", "hold NaN or infinite values")
    assert not (tmp_path / "evaluation").exists()


def test_a_state_dict_with_a_foreign_key_names_the_key_first(tmp_path):
    import torch

    from pipeline.architectures import Linear
    from pipeline.models import build

    state = build(Linear(), (1, 4, 4), 2).state_dict()
    long_key = "fc." + "x" * 300
    extra = {**state, long_key: torch.zeros(1)}
    done = predict(tmp_path, toy_checkpoint(tmp_path, state_dicts=[extra]))
    message = refused(done, "seed copy 0: unexpected keys 'fc.xxx", "missing keys none")
    assert message.index("unexpected keys") < 200


def test_a_compressed_checkpoint_is_refused_before_it_unpacks(tmp_path):
    """A zip bomb: 200 MB of zeros deflate to about 200 KB; torch.save writes stored entries."""
    import zipfile

    import torch

    plain = toy_checkpoint(tmp_path, "plain.pt", run={"padding": torch.zeros(50_000_000)})
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as source, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
    assert bomb.stat().st_size < 1_000_000
    refused(predict(tmp_path, bomb), "bomb.pt: holds compressed entries")


def test_a_checkpoint_declaring_a_huge_input_is_refused_before_building(tmp_path):
    """16x4096x4096 into a Linear layer would be a 10 GB matrix."""
    refused(predict(tmp_path, toy_checkpoint(tmp_path, input_shape=[16, 4096, 4096])),
            "declares input 16x4096x4096, beyond the bounds of any dataset")


# --- the HTTP client and URLs -------------------------------------------------------------------

def serve_raw(raw: bytes):
    """Answer with these bytes as they are: no status line or headers of the server's own."""
    def action(handler) -> None:
        handler.close_connection = True
        handler.wfile.write(raw)
    return action


@pytest.mark.parametrize(("answer", "name"), [
    (b"GARBAGE NOT HTTP\r\n\r\n", "a garbage status line"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150))
     + b"Content-Length: 3\r\n\r\nabc", "150 headers"),
    (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", "a 70 KB header line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 70_000 + b"\r\n",
     "a 70 KB chunk-size line"),
])
def test_a_server_that_breaks_http_gets_a_one_line_reason(tmp_path, http_server, answer, name):
    url = http_server.add("/broken/train.csv", serve_raw(answer))
    refused(download_url(tmp_path, {"url": url}), "could not fetch train.csv", "not valid HTTP")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(("url", "expected"), [
    ("http://example.org/my data.csv", "percent-encode it"),
    ("https://exämple.org/x.csv", "punycode"),
    ("http://[::1/x.csv", "is not a valid URL"),
    ("http:///x.csv", "names no host"),
])
def test_a_url_that_cannot_be_requested_is_refused_when_params_load(tmp_path, url, expected):
    refused(download_url(tmp_path, {"url": url}), "datasets.toy.train", expected)


# --- corners ------------------------------------------------------------------------------------

def test_a_nul_byte_in_one_cell_is_placed_by_line_and_column(tmp_path):
    body = HEADER + rows(10) + b"1,2,\x00,3,4\n" + rows(50)
    refused(prepare(tmp_path, body), "train.csv: line 12, column 3: a NUL byte")


@pytest.mark.parametrize(("packer", "what"), [("zip", "a ZIP archive"),
                                              ("bz2", "a bzip2 archive")])
def test_an_archive_given_as_a_csv_is_named_for_what_it_is(tmp_path, packer, what):
    import bz2
    import io
    import zipfile

    csv_bytes = HEADER + rows(60)
    if packer == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("train.csv", csv_bytes)
        packed = buffer.getvalue()
    else:
        packed = bz2.compress(csv_bytes)
    message = refused(prepare(tmp_path, packed), f"train.csv: {what}, not a CSV", "unpack it")
    assert "iconv" not in message


def test_a_5000_digit_integer_in_params_is_refused_in_one_line(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  epochs: 60", "  epochs: " + "9" * 5000,
                                                      1)
    assert "a value YAML cannot read as written" in params_error(tmp_path, text)


def test_a_nul_in_a_source_path_is_refused_when_params_load(tmp_path):
    params = write_params(tmp_path, {**TOY, "train": {"path": "a\x00b.csv"}})
    assert "path holds a NUL character" in params_error(tmp_path, params.read_text())


def test_seed_copies_past_the_largest_seed_are_refused(tmp_path):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["seed"] = 2**32 - 2
    message = params_error(tmp_path, yaml.safe_dump(params))
    assert "models.cnn.seeds = 3 with train.seed = 4294967294" in message
    assert "lower train.seed" in message


def test_a_class_name_with_dollars_is_drawn_as_text():
    """"$\\frac{1}{$" is broken mathtext: drawn literally, not parsed (which raised)."""
    from pipeline import plots

    names = ["$\\frac{1}{$", "b$"]
    uri = plots.confusion_matrices(np.array([[3, 1], [0, 4]]), plots.literal(names), "t")
    assert uri.startswith("data:image/png;base64,")
    with pytest.raises(ValueError):
        plots.confusion_matrices(np.array([[3, 1], [0, 4]]), names, "t")


def test_a_timing_file_of_the_wrong_types_reads_as_missing(tmp_path):
    from pipeline.tracking import read_timing

    (tmp_path / "t.json").write_text('{"device": "cpu", "train_seconds": "fast", '
                                     '"samples_per_second": 1.0, "epoch_seconds": [1.0]}')
    assert read_timing(tmp_path / "t.json") is None
    (tmp_path / "u.json").write_text('{"device": "cpu", "train_seconds": 2.0, '
                                     '"samples_per_second": 1.0, "epoch_seconds": [1.0]}')
    assert read_timing(tmp_path / "u.json").train_seconds == 2.0


def test_more_training_processes_than_cores_are_refused_before_any_starts(tmp_path):
    params = write_params(tmp_path, execution={"processes": 64, "device": "cpu"})
    done = run_module("pipeline.stages.train", "--params", str(params), "--dataset", "digits",
                      "--model", "linear", "--data", str(tmp_path / "none"), "--checkpoint",
                      str(tmp_path / "m.pt"), "--live", str(tmp_path / "live"), "--tensorboard",
                      str(tmp_path / "tb"), "--timing", str(tmp_path / "t.json"))
    refused(done, "execution.processes=64 but this process may use",
            "set execution.processes to at most")
    assert not (tmp_path / "live").exists()


def test_a_download_cache_entry_linked_to_a_device_is_replaced_not_read(tmp_path, http_server):
    body = HEADER + rows(60)
    import hashlib

    url = http_server.add("/data/train.csv", serve_bytes(body))
    (tmp_path / "cache" / "toy").mkdir(parents=True)
    (tmp_path / "cache" / "toy" / "train.csv").symlink_to("/dev/zero")
    done = download_url(tmp_path, {"url": url, "sha256": hashlib.sha256(body).hexdigest()})
    assert done.returncode == 0, done.stderr
    assert "is not a regular file" in done.stdout
    assert (tmp_path / "raw" / "train.csv").read_bytes() == body
    assert not (tmp_path / "cache" / "toy" / "train.csv").is_symlink()


# --- good inputs that were refused ---------------------------------------------------------------

def named_rows(count: int, names=("a", "b", "c")) -> bytes:
    return b"".join(b"%s,%d,0,255,7\n" % (names[i % 3].encode(), i) for i in range(count))


def test_a_label_column_of_class_names_is_read_through_classes(tmp_path):
    from pipeline.splits import load_split

    done = prepare(tmp_path, HEADER + named_rows(60))
    assert done.returncode == 0, done.stderr
    train = load_split(tmp_path / "prepared" / "train.pkl")
    assert sorted(set(train.labels.tolist())) == [0, 1, 2]
    # the same rows with numeric labels give the same split
    (tmp_path / "n").mkdir()
    numeric = prepare(tmp_path / "n", HEADER + rows(60))
    assert numeric.returncode == 0, numeric.stderr
    again = load_split(tmp_path / "n" / "prepared" / "train.pkl")
    assert train.labels.tolist() == again.labels.tolist()
    assert (train.images == again.images).all()


def test_a_headerless_file_of_class_names_is_data_not_a_header(tmp_path):
    done = prepare(tmp_path, named_rows(60), dataset={**TOY, "header": False,
                                                      "label_column": "first"})
    assert done.returncode == 0, done.stderr


def test_an_unknown_class_name_is_named_with_its_line(tmp_path):
    body = HEADER + named_rows(10) + b"Sneaker,1,2,3,4\n" + named_rows(20)
    refused(prepare(tmp_path, body), "train.csv, line 12: label 'Sneaker' is not one of the "
                                     "dataset's classes (a, b, c)", "add it to `classes:`")


# --- a full disk: each stage names the file, the space left, and leaves nothing --------------

def on_a_small_disk(folder: Path, kilobytes: int, module: str,
                    *args: str) -> subprocess.CompletedProcess:
    """`python -m module args` with `folder` on a file system of `kilobytes` (a tmpfs in the
    process's own mount namespace, gone with it). What the stage left there is listed on the
    last line of stderr, `left: <files>`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; folder="$2"; shift 2; "$@"; '
              'status=$?; echo "left: $(find "$folder" -type f | tr "\\n" " ")" >&2; exit $status')
    return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                           str(kilobytes), str(folder), sys.executable, "-m", module, *args],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


def full_disk_refused(done: subprocess.CompletedProcess, written: str) -> str:
    assert done.returncode == 1, done.stderr[-2000:]
    *said, left = done.stderr.strip().splitlines()
    assert left == "left:", left  # nothing half-written
    error = [line for line in said if line.startswith("error: ")]
    assert "Traceback" not in done.stderr and len(error) == 1, done.stderr[-3000:]
    assert error[0].startswith(f"error: {written}: the disk is full after "), error
    assert " free of " in error[0] and "free some space" in error[0], error
    return error[0]


def test_a_full_disk_while_downloading_names_the_file(http_server, tmp_path):
    url = http_server.add("/big.csv", serve_bytes(HEADER + rows(20_000)))  # 300 KB
    params = write_params(tmp_path, {**TOY, "train": {"url": url}},
                          download={"retries": 0, "backoff_s": 0})
    done = on_a_small_disk(tmp_path / "cache", 64, "pipeline.stages.download", "--params",
                           str(params), "--dataset", "toy", "--out", str(tmp_path / "raw"),
                           "--cache", str(tmp_path / "cache"), "--sources", str(tmp_path / "src"))
    full_disk_refused(done, str(tmp_path / "cache" / "toy" / "big.csv"))
    assert not (tmp_path / "raw").exists()


def test_a_full_disk_while_preparing_names_the_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pixels = ",".join(f"p{i}" for i in range(64))
    (raw / "train.csv").write_text(f"label,{pixels}\n" + "".join(
        f"{i % 3}," + ",".join(str((i * 7 + j) % 256) for j in range(64)) + "\n"
        for i in range(3000)))
    params = write_params(tmp_path, {**TOY, "shape": [1, 8, 8]})
    done = on_a_small_disk(tmp_path / "disk", 64, "pipeline.stages.prepare", "--params",
                           str(params), "--dataset", "toy", "--raw", str(raw), "--out",
                           str(tmp_path / "disk" / "prepared"))
    full_disk_refused(done, str(tmp_path / "disk" / "prepared" / "train.pkl"))


def test_a_full_disk_while_training_names_the_output(tmp_path):
    from tests.test_tracking import train_args

    args = train_args(tmp_path, tensorboard=False)
    disk = tmp_path / "disk"
    for option, name in [("--checkpoint", "tiny.pt"), ("--live", "live"),
                         ("--tensorboard", "tb"), ("--timing", "timing.json")]:
        args[args.index(option) + 1] = str(disk / name)
    done = on_a_small_disk(disk, 8, "pipeline.stages.train", *args)
    full_disk_refused(done, str(disk / "tb"))  # the first output the stage writes


# --- another revision's params reach the terminal as text ------------------------------------

def test_pipeline_compare_prints_a_changed_value_holding_escapes_as_text_on_a_terminal(tmp_path):
    """A class name with an OSC title sequence, a bell and a clear-screen, changed in the
    workspace: the "changed from the commit" column shows it escaped, on a pseudo-terminal (where
    colour and terminal libraries switch on) as through a pipe."""
    import pty

    from tests.conftest import copy_repository, sh

    copy_repository(tmp_path, keep_lock=True)
    sh(["git", "add", "-A"], tmp_path)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base"], tmp_path)
    params = tmp_path / "params.yaml"
    text = params.read_text()
    assert 'classes: ["0", "1",' in text
    params.write_text(text.replace('classes: ["0", "1",', r'classes: ["\e]0;pwned\a\e[2J", "1",',
                                   1))
    piped = run_module("pipeline.compare", "--params", "params.yaml", cwd=tmp_path)
    primary, secondary = pty.openpty()
    shown = subprocess.Popen([sys.executable, "-m", "pipeline.compare", "--params",
                              "params.yaml"], cwd=tmp_path, stdout=secondary, stderr=secondary,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"})
    os.close(secondary)
    on_terminal = b""
    with contextlib.suppress(OSError):  # EIO once the program has exited
        while chunk := os.read(primary, 1 << 16):
            on_terminal += chunk
    os.close(primary)
    assert shown.wait(timeout=120) == piped.returncode == 0, piped.stderr
    for output in (piped.stdout.encode(), on_terminal.replace(b"\r\n", b"\n")):
        assert not {byte for byte in output if byte < 0x20} - {0x09, 0x0A}, output[:2000]
        assert b"datasets.digits.classes=['\\x1b]0;pwned\\x07\\x1b[" in output, output[:2000]


def test_a_full_disk_for_the_resume_state_only_turns_saving_off(tmp_path):
    from tests.test_tracking import train_args

    args = train_args(tmp_path, tensorboard=False)
    params = Path(args[args.index("--params") + 1])
    settings = yaml.safe_load(params.read_text())
    settings["execution"]["save_state_every_s"] = 0
    params.write_text(yaml.safe_dump(settings))
    state = tmp_path / "state"
    done = on_a_small_disk(state, 4, "pipeline.stages.train", *args, "--state", str(state))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("note: saving the training state failed") == 1
    assert "training goes on" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "left:"
    assert (tmp_path / "tiny.pt").is_file()
