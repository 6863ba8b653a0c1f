from __future__ import annotations

import csv
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.architectures import Linear
from pipeline.checkpoint import Checkpoint, load_checkpoint
from pipeline.engine import fit
from pipeline.models import build
from pipeline.params import TrainSettings
from pipeline.predict import PredictError, _light_background, load_image, main, probabilities
from tests.conftest import CPU, ROOT, toy_splits


def save(path, shape, results, classes, dataset=None):
    Checkpoint(Linear(), shape, classes, [r.state_dict for r in results],
               results[0].initial_state_dict, dataset, "linear").save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A model that tells 'left' (bright left half) from 'right' on 1x4x4 images."""
    result = fit(Linear(), TrainSettings(epochs=8, batch_size=32, lr=0.05), toy_splits(), CPU,
                 seed=0, log=lambda line: None)
    return save(tmp_path_factory.mktemp("model") / "toy.pt", (1, 4, 4), [result],
                ["left", "right"])


def toy_dataset_checkpoint(checkpoint, tmp_path, header: bool, label_column: str):
    """The toy model as the checkpoint of a CSV dataset `toy` that tmp_path/params.yaml defines
    with this header and label column; returns the checkpoint's path."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["toy"] = {"format": "csv", "train": {"path": "x.csv"}, "header": header,
                                 "label_column": label_column, "shape": [1, 4, 4],
                                 "classes": ["left", "right"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = load_checkpoint(checkpoint)
    Checkpoint(loaded.architecture, loaded.input_shape, loaded.classes, loaded.state_dicts,
               loaded.initial_state_dict, "toy", "linear").save(tmp_path / "toy.pt")
    return tmp_path / "toy.pt"


def half_image(path, side: str, size: int = 16, ink: int = 255, paper: int = 0):
    pixels = np.full((size, size), paper, dtype=np.uint8)
    if side == "left":
        pixels[:, : size // 2] = ink
    else:
        pixels[:, size // 2 :] = ink
    Image.fromarray(pixels).save(path)
    return path


def test_pngs_are_resized_and_classified(checkpoint, tmp_path, capsys):
    left = half_image(tmp_path / "left.png", "left")
    right = half_image(tmp_path / "right.png", "right")
    out = tmp_path / "predictions.csv"
    main([str(left), str(right), "--checkpoint", str(checkpoint), "--invert", "no",
          "--out", str(out), "--top-k", "2"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{left}: left ") and printed[1].startswith(f"{right}: right ")
    rows = out.read_text().splitlines()
    assert rows[0] == "input,actual,predicted,confidence,left,right"
    assert rows[1].split(",")[2] == "left" and rows[2].split(",")[2] == "right"


def test_a_light_background_image_is_inverted_to_the_datasets_convention(checkpoint, tmp_path,
                                                                        capsys):
    scan = half_image(tmp_path / "scan.png", "left", ink=0, paper=255)  # dark ink on white
    image = load_image(scan, (1, 4, 4), invert="auto")
    assert image[0, :, :2].min() > 200 and image[0, :, 2:].max() < 50
    main([str(scan), "--checkpoint", str(checkpoint)])
    assert capsys.readouterr().out.startswith(f"{scan}: left ")


def test_a_seed_ensemble_checkpoint_predicts_with_the_mean_of_its_copies_logits(tmp_path,
                                                                                 capsys):
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.05)
    results = [fit(Linear(), settings, toy_splits(), CPU, seed=s, log=lambda line: None)
               for s in (0, 1)]
    path = save(tmp_path / "pair.pt", (1, 4, 4), results, ["left", "right"])
    images = toy_splits()["test"].images[:5]
    x = torch.from_numpy(images).float() / 255.0
    expected = []
    for result in results:
        model = build(Linear(), (1, 4, 4), 2)
        model.load_state_dict(result.state_dict)
        expected.append(model.eval()(x))
    want = torch.softmax(torch.stack(expected).mean(0), 1).detach().numpy()
    models = load_checkpoint(path).seed_models()
    np.testing.assert_allclose(probabilities(models, images), want, rtol=1e-5)

    main([str(half_image(tmp_path / "l.png", "left")), "--checkpoint", str(path),
          "--invert", "no"])
    captured = capsys.readouterr()
    assert "averaging the logits of its 2 seed copies" in captured.err
    assert captured.out.startswith(f"{tmp_path / 'l.png'}: left ")


def test_light_background_detection():
    dark = np.zeros((1, 8, 8), np.uint8)
    dark[0, 2:6, 2:6] = 255
    assert not _light_background(dark) and _light_background(255 - dark)


def test_csv_rows_in_the_dataset_layout_are_classified_with_their_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    splits = toy_splits()
    for name, split in splits.items():  # reshape the toy data to digits' 1x8x8, 10 classes
        images = rng.integers(0, 255, (len(split.labels), 1, 8, 8)).astype(np.uint8)
        splits[name] = type(split)(images, split.labels, [str(i) for i in range(10)])
    result = fit(Linear(), TrainSettings(epochs=1), splits, CPU, seed=0, log=lambda line: None)
    model = save(tmp_path / "digits.pt", (1, 8, 8), [result], [str(i) for i in range(10)],
                 "digits")
    rows = tmp_path / "new.csv"  # digits layout: no header, 64 pixels 0..16, label last
    rows.write_text("".join(",".join(["8"] * 64 + [str(label)]) + "\n" for label in (3, 7)))
    main([str(rows), "--checkpoint", str(model), "--params", str(ROOT / "params.yaml")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{rows}:1: ") and "  (true: 3)" in printed[0]
    assert "  (true: 7)" in printed[1]
    # a flat grey row is nothing like a digit: the prediction says so
    assert "[unsure: the top class has under 50%" in printed[0]
    assert "looks unlike the training images: ink covers 100% of it]" in printed[0]


def test_wrong_inputs_get_clear_errors(checkpoint, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    with pytest.raises(PredictError, match="photo.png: not an image this tool can read"):
        main([str(fake), "--checkpoint", str(checkpoint)])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(PredictError, match="notes.txt: expected a CSV"):
        main([str(notes), "--checkpoint", str(checkpoint)])


def test_the_command_line_prints_one_error_line(checkpoint, tmp_path):
    missing = tmp_path / "missing.png"
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", str(missing),
                             "--checkpoint", str(checkpoint)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {missing}: no such file"


def test_one_bad_file_does_not_stop_the_batch(checkpoint, tmp_path):
    """Every readable input is classified; the bad ones are listed and the exit code says so."""
    good = [half_image(tmp_path / "a.png", "left"), half_image(tmp_path / "b.png", "right")]
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    missing = tmp_path / "gone.png"
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", str(good[0]), str(bad),
                             str(good[1]), str(missing), "--checkpoint", str(checkpoint),
                             "--invert", "no"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    printed = result.stdout.splitlines()
    assert printed[0].startswith(f"{good[0]}: left ") and printed[1].startswith(f"{good[1]}: right")
    assert "error: 2 of 4 inputs could not be classified" in result.stderr
    assert f"{bad}: not an image this tool can read" in result.stderr
    assert f"{missing}: no such file" in result.stderr


def test_an_unlabelled_csv_of_new_data_is_classified(tmp_path):
    """New data has no label column: rows of pixels only, told apart by the column count."""
    rng = np.random.default_rng(0)
    splits = toy_splits()
    for name, split in splits.items():
        images = rng.integers(0, 255, (len(split.labels), 1, 8, 8)).astype(np.uint8)
        splits[name] = type(split)(images, split.labels, [str(i) for i in range(10)])
    result = fit(Linear(), TrainSettings(epochs=1), splits, CPU, seed=0, log=lambda line: None)
    model = save(tmp_path / "digits.pt", (1, 8, 8), [result], [str(i) for i in range(10)],
                 "digits")
    rows = tmp_path / "new.csv"  # digits layout without its last (label) column
    rows.write_text("".join(",".join([str(v)] * 64) + "\n" for v in (0, 8, 16)))
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(rows), "--checkpoint",
                           str(model), "--params", str(ROOT / "params.yaml"), "--out",
                           str(tmp_path / "out.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in printed] == [f"{rows}:{i}" for i in (1, 2, 3)]
    assert "(true:" not in done.stdout and "accuracy" not in done.stderr
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[1].split(",")[1] == ""  # no actual label
    rows.write_text(",".join(["8"] * 63) + "\n")  # neither layout: the reader says so
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(rows), "--checkpoint",
                           str(model), "--params", str(ROOT / "params.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "new.csv: 63 columns, but the model takes 1x8x8 images: 64 pixel columns" \
        in done.stderr
    rows.write_text(",".join(["8"] * 785) + "\n")  # a Fashion-MNIST row for a digits model
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(rows), "--checkpoint",
                           str(model), "--params", str(ROOT / "params.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "header" not in done.stderr
    assert "new.csv: 785 columns, but the model takes 1x8x8 images" in done.stderr
    assert "from another dataset?" in done.stderr


def test_a_csv_for_a_checkpoint_whose_dataset_params_do_not_define_is_explained(checkpoint,
                                                                                 tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0"] * 17) + "\n")
    with pytest.raises(PredictError, match="rows.csv: the CSV layout is unknown: the "
                                           "checkpoint's dataset is not defined"):
        main([str(rows), "--checkpoint", str(checkpoint), "--params", str(ROOT / "params.yaml")])


HOSTILE_CLASSES = ["\x1b]0;owned\x07\x1b[2J", "=HYPERLINK(\"http://x.example\",\"ok\")\r\u202e"]


def test_hostile_names_reach_the_terminal_as_text_and_the_csv_as_text(checkpoint, tmp_path):
    """Class names from a checkpoint and file names from the command line hold escape sequences,
    a carriage return, a bidi override and a spreadsheet formula: nothing below 0x20 but newline
    and tab reaches the terminal, and the CSV's cells start as text, not formulas."""
    trained = load_checkpoint(checkpoint)
    hostile = tmp_path / "hostile.pt"
    Checkpoint(trained.architecture, trained.input_shape, HOSTILE_CLASSES, trained.state_dicts,
               trained.initial_state_dict, "digits\x1b[31m", "linear").save(hostile)
    image = half_image(tmp_path / "left\x1b[1A\x1b[2K.png", "left")
    missing = tmp_path / "gone\x1b]2;x\x07.png"
    out = tmp_path / "out.csv"
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", str(image), str(missing),
                             "--checkpoint", str(hostile), "--invert", "no", "--out", str(out)],
                            capture_output=True, cwd=tmp_path)
    assert result.returncode == 1  # the missing file
    printed = result.stdout + result.stderr
    assert not [byte for byte in printed if byte < 0x20 and byte not in b"\n\t"], printed
    assert "\u202e" not in printed.decode()
    assert b"\\x1b]0;owned\\x07" in result.stdout and b"gone\\x1b]2;x\\x07.png" in result.stderr
    with out.open(newline="") as handle:
        header, row = list(csv.reader(handle))
    assert header[4:] == [HOSTILE_CLASSES[0], "'" + HOSTILE_CLASSES[1]]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in header + row)


def test_a_small_image_is_resized_up_like_any_other(checkpoint, tmp_path, capsys):
    """A 2x2 picture for a 4x4 model is scaled up, not refused."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.array([[255, 0], [255, 0]], np.uint8)).save(tiny)
    main([str(tiny), "--checkpoint", str(checkpoint), "--invert", "no"])
    assert capsys.readouterr().out.startswith(f"{tiny}: left ")


def test_a_photo_is_turned_upright_by_its_exif_orientation(checkpoint, tmp_path, capsys):
    """A phone stores the sensor's pixels and an Orientation tag; the photo is classified as it
    is shown. Here the stored pixels are bright in the top-left quarter, and Orientation 6 (turn
    90 degrees clockwise to show it) puts that brightness in the top-right quarter."""
    stored = np.zeros((16, 16), np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(photo, exif=exif.tobytes(), quality=95)
    main([str(photo), "--checkpoint", str(checkpoint), "--invert", "no"])
    assert capsys.readouterr().out.startswith(f"{photo}: right ")
    plain = tmp_path / "plain.jpg"
    Image.fromarray(np.rot90(stored, k=-1).copy()).save(plain, quality=95)
    main([str(plain), "--checkpoint", str(checkpoint), "--invert", "no"])
    assert capsys.readouterr().out.startswith(f"{plain}: right ")


def test_a_fifo_given_as_an_image_is_refused_at_once(checkpoint, tmp_path):
    import os

    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)  # no writer: opening it to read would wait forever
    with pytest.raises(PredictError, match=r"photo.png: is a named pipe \(FIFO\)"):
        main([str(fifo), "--checkpoint", str(checkpoint)])


def test_a_headerless_csv_needs_no_dataset_change(checkpoint, tmp_path):
    """The dataset's CSVs have a header and a `label` column; a file without a header is read
    as it is (auto), its label taken from the first column, or as --label-column says."""
    model = toy_dataset_checkpoint(checkpoint, tmp_path, header=True,
                                   label_column="label")
    left = ["255", "255", "0", "0"] * 4
    (tmp_path / "first.csv").write_text(",".join(["0", *left]) + "\n")
    (tmp_path / "last.csv").write_text(",".join([*left, "0"]) + "\n")
    for name, extra in (("first.csv", []), ("last.csv", ["--label-column", "last"])):
        done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / name),
                               "--checkpoint", str(model), "--params",
                               str(tmp_path / "params.yaml"), *extra],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{tmp_path / name}:1: left ")
        assert "(true: left)" in done.stdout


PEAK_MEMORY = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "pipeline.predict", *sys.argv[1:]])
sys.stderr.write(f"peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.exit(done.returncode)
"""  # the peak resident memory of `python -m pipeline.predict ...`, its only child


@pytest.mark.slow
def test_a_large_csv_is_classified_in_bounded_memory(tmp_path):
    """Rows are read, classified, printed and written in blocks: a file 16 times larger
    raises the peak memory by far less than its rows' arrays and names would take whole."""
    model = digits_linear_checkpoint(tmp_path)
    row = b",".join([b"16"] * 32 + [b"0"] * 32) + b",7\n"  # the digits layout: label last

    def peak_mb(rows: int) -> float:
        data = tmp_path / f"rows-{rows}.csv"
        data.write_bytes(row * rows)
        done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(data), "--checkpoint",
                               str(model), "--params", str(ROOT / "params.yaml"), "--top-k", "1",
                               "--out", str(tmp_path / "out.csv")], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("\n") == rows
        assert (tmp_path / "out.csv").read_text().count("\n") == rows + 1
        return int(done.stderr.rsplit("peak_kb=", 1)[1].split()[0]) / 1024

    small, large = peak_mb(25_000), peak_mb(400_000)  # 3.5 MB and 56 MB of CSV
    # whole, the large file's rows would take over 100 MB (images, names, probabilities)
    assert large - small < 40, (small, large)


def digits_linear_checkpoint(folder) -> str:
    model = folder / "digits.pt"
    state = build(Linear(), (1, 8, 8), 10).state_dict()
    Checkpoint(Linear(), (1, 8, 8), [str(d) for d in range(10)], [state], state, "digits",
               "linear").save(model)
    return str(model)


@pytest.mark.slow
def test_a_huge_image_is_classified_with_little_more_memory_than_its_pixels(tmp_path):
    """8000 x 8000 pictures (PNGs of about 130 KB, under Pillow's bomb limit): a 16-bit grey
    one and a transparent RGBA one are reduced a band at a time before any float arithmetic,
    and read as the same picture in 8-bit grey is."""
    model = digits_linear_checkpoint(tmp_path)
    stroke = (slice(2000, 6000), slice(3800, 4200))
    grey16 = np.zeros((8000, 8000), np.uint16)
    grey16[stroke] = 65535
    rgba = np.zeros((8000, 8000, 4), np.uint8)
    rgba[stroke] = 255  # white opaque ink on a transparent background
    grey8 = np.zeros((8000, 8000), np.uint8)
    grey8[stroke] = 255
    pictures = {"grey16": (Image.fromarray(grey16), 8000 * 8000 * 2),
                "rgba": (Image.fromarray(rgba, "RGBA"), 8000 * 8000 * 4),
                "grey8": (Image.fromarray(grey8), 8000 * 8000)}
    Image.fromarray(grey8[::250, ::250]).save(tmp_path / "small.png")

    def run(name: str) -> tuple[float, str]:
        done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(tmp_path / name),
                               "--checkpoint", model, "--params", str(ROOT / "params.yaml")],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        peak = int(done.stderr.rsplit("peak_kb=", 1)[1].split()[0]) * 1024
        return peak, done.stdout.split(": ", 1)[1]

    baseline, _ = run("small.png")
    read = {}
    for name, (picture, decoded_bytes) in pictures.items():
        picture.save(tmp_path / f"{name}.png")
        del picture
        peak, read[name] = run(f"{name}.png")
        assert peak - baseline < 2 * decoded_bytes + 64 * 2**20, (name, peak, baseline)
    assert read["grey16"] == read["grey8"] == read["rgba"], read


def test_a_csv_refused_part_way_leaves_nothing_of_it_in_out_or_the_accuracy(checkpoint,
                                                                             tmp_path):
    """Rows stream through in blocks, so a bad row at line 20,001 comes after thousands of rows
    were shown; the --out file and the accuracy hold only files read whole, and the message says
    what was shown."""
    model = toy_dataset_checkpoint(checkpoint, tmp_path, header=False,
                                   label_column="first")
    left = ",".join(["0", *(["255", "255", "0", "0"] * 4)])
    (tmp_path / "bad.csv").write_text(f"{left}\n" * 20_000 + left.replace("255", "x", 1) + "\n")
    (tmp_path / "good.csv").write_text(f"{left}\n")
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "bad.csv"),
                           str(tmp_path / "good.csv"), "--checkpoint", str(model), "--params",
                           str(tmp_path / "params.yaml"), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "bad.csv, line 20001" in done.stderr
    assert re.search(r"its first [0-9,]+ rows, shown above, are left out of the accuracy and "
                     r"--out", done.stderr), done.stderr[-500:]
    assert "accuracy on the 1 labelled inputs" in done.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{tmp_path / 'good.csv'}:1,")


def test_a_headerless_csv_of_class_name_labels_is_data(checkpoint, tmp_path):
    model = toy_dataset_checkpoint(checkpoint, tmp_path, header=True,
                                   label_column="label")
    (tmp_path / "named.csv").write_text(",".join(["left", *(["255", "255", "0", "0"] * 4)])
                                        + "\n")
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "named.csv"),
                           "--checkpoint", str(model), "--params", str(tmp_path / "params.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "(true: left)" in done.stdout


def test_a_grey_model_without_a_drawing_recipe_says_once_that_it_resizes_whole(checkpoint,
                                                                               tmp_path):
    picture = np.zeros((16, 16), np.uint8)
    picture[:, :8] = 255  # bright left half
    for name in ("a.png", "b.png"):
        Image.fromarray(picture).save(tmp_path / name)
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "a.png"),
                           str(tmp_path / "b.png"), "--checkpoint", str(checkpoint)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("note: no drawing recipe for this model's images") == 1
    assert "image files are resized whole" in done.stderr
    assert done.stdout.count("\n") == 2
