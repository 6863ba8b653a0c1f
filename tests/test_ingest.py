from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets import CsvLayout
from pipeline.ingest import DataError, duplicate_count, read_image_csv, row_digests
from tests.conftest import FASHION_SAMPLE, ROOT

KAGGLE = CsvLayout(num_pixels=784, num_classes=10, header=True, label_column="label")
TINY = CsvLayout(num_pixels=4, num_classes=3, header=True, label_column="label")
HEADER = "label,p1,p2,p3,p4\n"


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_reads_the_real_kaggle_layout_sample():
    table = read_image_csv(FASHION_SAMPLE, KAGGLE)
    reference = pd.read_csv(FASHION_SAMPLE)
    assert table.images.shape == (1000, 784)
    assert table.images.dtype == np.uint8
    np.testing.assert_array_equal(table.labels, reference["label"].to_numpy())
    np.testing.assert_array_equal(table.images, reference.drop(columns="label").to_numpy())
    assert table.quality.rows_read == table.quality.rows_kept == 1000


def test_small_blocks_give_the_same_arrays_as_one_block():
    whole = read_image_csv(FASHION_SAMPLE, KAGGLE)
    pieces = read_image_csv(FASHION_SAMPLE, KAGGLE, block_bytes=10_000)
    np.testing.assert_array_equal(whole.images, pieces.images)
    np.testing.assert_array_equal(whole.labels, pieces.labels)


def test_gzip_bom_crlf_spaces_and_no_final_newline_are_accepted(tmp_path):
    text = "\ufefflabel,p1,p2,p3,p4\r\n1, 2 ,3,4,5\r\n2,0,0,0,255"
    path = write(tmp_path, gzip.compress(text.encode("utf-8")), "data.csv.gz")
    table = read_image_csv(path, TINY)
    np.testing.assert_array_equal(table.labels, [1, 2])
    np.testing.assert_array_equal(table.images, [[2, 3, 4, 5], [0, 0, 0, 255]])


def test_label_column_last_and_by_index_without_header(tmp_path):
    path = write(tmp_path, "1,2,3,4,2\n5,6,7,8,0\n")
    for spec in ("last", 4, -1):
        layout = CsvLayout(4, 3, header=False, label_column=spec)
        table = read_image_csv(path, layout)
        np.testing.assert_array_equal(table.labels, [2, 0])
        np.testing.assert_array_equal(table.images, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_pixels_are_scaled_to_0_255_when_the_maximum_differs(tmp_path):
    path = write(tmp_path, "0,8,16,4,0\n")
    table = read_image_csv(path, CsvLayout(4, 10, header=False, label_column="last",
                                           max_pixel=16))
    np.testing.assert_array_equal(table.images, [[0, 128, 255, 64]])


def test_blank_lines_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, HEADER + "1,2,3,4,5\n\n2,0,0,0,0\n\n")
    table = read_image_csv(path, TINY)
    assert len(table.labels) == 2
    assert table.quality.blank_lines >= 1


@pytest.mark.parametrize(
    ("row", "line_fragment"),
    [
        ("1,2,3,4,5,6", "line 3: too many fields: found 6, expected 5"),
        ("1,2,3,4", "line 3: too few fields: found 4, expected 5"),
        ("1,2,x,4,5", "line 3, column 3 ('p2'): non-numeric value 'x'"),
        ("1,2,,4,5", "line 3, column 3 ('p2'): empty cell"),
        ("1,2,3.5,4,5", "line 3, column 3 ('p2'): fractional value '3.5'"),
        ("1,2,3.0,4,5", "line 3, column 3 ('p2'): fractional value '3.0'"),
        ("1,2,3,4,256", "line 3, column 5 ('p4'): pixel '256' is outside 0..255"),
        ("1,2,-1,4,5", "line 3, column 3 ('p2'): pixel '-1' is outside 0..255"),
        ("3,2,3,4,5", "line 3, column 1 ('label'): label '3' is not a class; expected 0..2"),
        ("-1,2,3,4,5", "line 3, column 1 ('label'): label '-1' is not a class"),
    ],
)
def test_each_defect_names_file_line_column_and_value(tmp_path, row, line_fragment):
    path = write(tmp_path, HEADER + "0,1,1,1,1\n" + row + "\n2,0,0,0,0\n")
    with pytest.raises(DataError) as caught:
        read_image_csv(path, TINY)
    message = str(caught.value)
    assert str(path) in message
    assert line_fragment in message
    assert "on_bad_row: drop" in message


def test_defect_line_numbers_are_exact_in_later_blocks(tmp_path):
    rows = "".join(f"{i % 3},1,2,3,4\n" for i in range(2000))
    path = write(tmp_path, HEADER + rows + "1,2,3,4,999\n")
    with pytest.raises(DataError, match=r"line 2002, column 5 \('p4'\)"):
        read_image_csv(path, TINY, block_bytes=1024)


@pytest.mark.parametrize(
    ("text", "layout", "expected"),
    [
        ("", TINY, "the file is empty"),
        (HEADER, TINY, "no data rows after the header"),
        ("label,p1,p2,p3\n0,1,2,3\n", TINY, "the header has 4 columns, expected 5"),
        ("y,p1,p2,p3,p4\n0,1,2,3,4\n", TINY, "the header has no label column 'label'"),
        ("0,1,2,3,4\n", TINY, "expected a header row but found numbers"),
        (HEADER + "0,1,2,3,4\n", CsvLayout(4, 3, header=False, label_column="first"),
         "header: true"),
    ],
)
def test_file_level_problems(tmp_path, text, layout, expected):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=expected):
        read_image_csv(path, layout)


def test_missing_file_says_which_stage_to_run(tmp_path):
    with pytest.raises(DataError, match="run the download stage"):
        read_image_csv(tmp_path / "nope.csv", TINY)


def test_drop_mode_skips_bad_rows_and_counts_them_by_reason(tmp_path):
    good = "".join(f"{i % 3},1,2,3,4\n" for i in range(200))
    path = write(tmp_path, HEADER + good + "1,2,x,4,5\n1,2,3\n9,0,0,0,0\n")
    table = read_image_csv(path, TINY, on_bad_row="drop", max_bad_fraction=0.05)
    assert len(table.labels) == 200
    report = table.quality.as_dict()
    assert report["rows_read"] == 203
    assert report["rows_dropped"] == 3
    assert report["dropped_by_reason"] == {
        "label out of range": 1, "non-numeric value": 1, "too few fields": 1}
    assert any("line 202" in example for example in report["dropped_examples"])


def test_drop_mode_still_fails_above_the_bad_fraction(tmp_path):
    path = write(tmp_path, HEADER + "0,1,2,3,4\n1,x,2,3,4\n2,1,2,3,4\n")
    with pytest.raises(DataError, match=r"1 of 3 rows are bad .*max_bad_fraction"):
        read_image_csv(path, TINY, on_bad_row="drop", max_bad_fraction=0.1)


def test_duplicates_are_counted(tmp_path):
    images = np.array([[1, 2], [3, 4], [1, 2], [1, 2]], dtype=np.uint8)
    assert duplicate_count(row_digests(images)) == 2


# --- the vectorised digits path -----------------------------------------------------------------

def _reader(layout: CsvLayout):
    from pipeline.ingest import _Reader

    reader = _Reader(Path("block.csv"), layout, "fail")
    reader.read_header(HEADER.encode() if layout.header else b"0" + b",0" * layout.num_pixels)
    return reader


@pytest.mark.parametrize("label_column", ["first", "last", 2])
def test_digits_path_agrees_with_the_exact_parser_on_random_tables(label_column):
    rng = np.random.default_rng(7)
    layout = CsvLayout(4, 3, header=False, label_column=label_column)
    table = rng.choice([0, 1, 9, 10, 99, 100, 255], size=(300, 5))
    label_index = {"first": 0, "last": 4, 2: 2}[label_column]
    table[:, label_index] = rng.integers(0, 3, 300)
    block = "".join(",".join(map(str, row)) + ("\r\n" if i % 2 else "\n")
                    for i, row in enumerate(table)).encode()
    reader = _reader(layout)
    fast = reader.parse_block_digits(block)
    exact = _reader(layout).parse_block_exact(block, 1)
    assert fast is not None
    np.testing.assert_array_equal(fast, table)
    np.testing.assert_array_equal(exact, table)
    assert reader.quality.rows_read == 0  # pure, so blocks parse in threads; the caller counts


@pytest.mark.parametrize(
    "block",
    [
        b"0,1,2,3,4\n1,2,,4,5\n",  # empty cell
        b"0,1,2,3,4\n\n",  # blank line
        b",1,2,3,4\n",  # empty first cell
        b"0,1,2,3,4,5\n",  # too many fields
        b"0,1,2,3\n1,2,3,4,5,6\n",  # fields right in total, wrong per row
        b"0,1,2,3,4\n1,2,3 ,4,5\n",  # a space
        b"0,1,2,3,4\n1,2,3.0,4,5\n",  # a dot
        b"0,1,2,3,4\n1,2,-3,4,5\n",  # a sign
        b"0,1,2,3,4\n1,2,0003,4,5\n",  # four digits
        b"0,1,2,3,4\n1,2,256,4,5\n",  # pixel out of range
        b"0,1,2,3,4\n3,2,3,4,5\n",  # label out of range
        b"0,1,2,3,4\n1,2,x,4,5\n",  # a letter
        b"0,1,2,3,4\r1,2,3,4,5\n",  # a lone carriage return
    ],
)
def test_digits_path_hands_anything_unusual_to_the_slower_paths(block):
    assert _reader(TINY).parse_block_digits(block) is None


@pytest.mark.parametrize("threads", [1, 4])
def test_parsing_threads_change_nothing_but_the_speed(tmp_path, monkeypatch, threads):
    """Blocks parse side by side and are stored in file order: the arrays, the quality counts
    (blank lines, dropped rows by reason) and the line an error names are the same for 1 thread
    as for 4."""
    import pipeline.ingest as ingest

    monkeypatch.setattr(ingest, "PARSE_THREADS", threads)
    rows = [f"{i % 3},{i % 256},{(7 * i) % 256},0,255" for i in range(3000)]
    rows[700] = ""  # a blank line
    rows[1200] = "1,2,3"  # too few fields: dropped
    rows[2500] = " 1 , 007,3,4,5"  # the pandas path
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    table = read_image_csv(path, TINY, on_bad_row="drop", max_bad_fraction=0.01,
                           block_bytes=2048)
    kept = [row for i, row in enumerate(rows) if i not in (700, 1200)]
    reference = pd.read_csv(io.StringIO(HEADER + "\n".join(kept) + "\n"),
                            skipinitialspace=True).to_numpy()
    np.testing.assert_array_equal(table.labels, reference[:, 0])
    np.testing.assert_array_equal(table.images, reference[:, 1:])
    assert table.quality.blank_lines == 1 and sum(table.quality.dropped.values()) == 1
    assert table.quality.rows_read == 2999 and table.quality.rows_kept == 2998
    assert "line 1202" in table.quality.examples[0]
    with pytest.raises(DataError, match="line 1202"):
        read_image_csv(path, TINY, block_bytes=2048)


def test_files_that_need_every_path_read_the_same_as_pandas(tmp_path):
    rows = [f"{i % 3},{i % 256},{(7 * i) % 256},0,255" for i in range(3000)]
    rows[1500] = " 1 , 007,3,4,5"  # spaces and a leading-zero field: the pandas path
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    table = read_image_csv(path, TINY, block_bytes=4096)
    reference = pd.read_csv(path, skipinitialspace=True).to_numpy()
    np.testing.assert_array_equal(table.labels, reference[:, 0])
    np.testing.assert_array_equal(table.images, reference[:, 1:])


def test_a_csv_larger_than_the_memory_allowed_is_still_ingested(tmp_path):
    """The memory the read takes at its peak (resident, measured the way the benchmark measures
    it, in a fresh process) stays within the final uint8 arrays x 1.3 plus a 24 MB chunk budget,
    less than the CSV itself; pandas.read_csv takes more, so the bound really binds."""
    import json
    import subprocess
    import sys
    import zlib

    from benchmarks.run import INGEST_CHILD
    from benchmarks.synthetic import csv_bytes, make_images

    rows = 30_000
    labels, pixels = make_images(rows, seed=3)
    path = write(tmp_path, csv_bytes(labels, pixels))
    allowance_mb = (1.3 * pixels.nbytes + labels.size * 8 + (24 << 20)) / 2**20
    assert path.stat().st_size / 2**20 > allowance_mb

    def run(reader: str) -> dict:
        done = subprocess.run([sys.executable, "-c", INGEST_CHILD, str(path), reader],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={"OPENBLAS_NUM_THREADS": "1", "PATH": ""})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    ours = run("pipeline")
    assert (ours["rows"], ours["digest"]) == (rows, zlib.crc32(pixels.tobytes()))
    assert ours["peak_mb"] <= allowance_mb, f"{ours['peak_mb']:.0f} MB > {allowance_mb:.0f} MB"
    assert run("pandas")["peak_mb"] > allowance_mb


def _faults_in_fresh_process(script: str, *args: str) -> list[str]:
    """Run `script` in a new interpreter (a stage's allocator state) and split what it prints."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.split()


def test_kept_memory_serves_the_next_allocations_without_faulting_pages_in_again():
    """pipeline.cli.keep_freed_memory, which every stage process calls: freed arrays of the
    parser's and batches' sizes (1-2 MB) stay with the process, so allocating them again faults
    no page in. With glibc's defaults the same rounds fault every page in again until its
    adaptive threshold settles (2,000 faults a round here, for three to five rounds), and when it
    settles depends on the machine, so only the kept side is asserted."""
    import platform
    import resource

    script = """
import resource
import numpy as np
from pipeline.cli import keep_freed_memory
kept = keep_freed_memory()
counts = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(2**20 + 4096 * i, np.uint8) for i in range(8)]
    del arrays
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, *counts)
"""
    kept, first, *later = _faults_in_fresh_process(script)
    if platform.libc_ver()[0] != "glibc":  # nothing to tune: the call says so
        assert kept == "False"
        return
    assert kept == "True"
    pages_a_round = 8 * 2**20 // resource.getpagesize()
    assert max(map(int, later)) < pages_a_round // 20, (first, later)


def test_a_stage_reading_a_csv_faults_in_its_output_not_its_temporaries_block_after_block(
        tmp_path):
    """With glibc's defaults, reading the benchmark's 60,000 rows in a fresh process faulted in
    84,000-115,000 pages, the parser's temporaries again for every block (30,000 for these
    20,000 rows on this machine, 3,200 on another). Kept: about the output's own pages."""
    import platform
    import resource

    from benchmarks.synthetic import write_csv

    path = write_csv(tmp_path / "rows.csv", 20_000, seed=2)
    script = """
import resource, sys
from pipeline.cli import keep_freed_memory
from pipeline.datasets import CsvLayout
from pipeline.ingest import read_image_csv
kept = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
table = read_image_csv(sys.argv[1], CsvLayout(784, 10, True, "label"))
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
      table.images.nbytes + table.labels.nbytes)
"""
    kept, faults, output_bytes = _faults_in_fresh_process(script, str(path))
    if platform.libc_ver()[0] != "glibc":
        assert kept == "False"
        return
    assert kept == "True"
    assert int(faults) < int(output_bytes) // resource.getpagesize() + 1_000, (faults, output_bytes)


def test_class_name_labels_are_found_after_a_header_wider_than_a_block(tmp_path):
    """Whether label cells name their class is decided on the first data line, wherever it
    falls: here the header alone fills the first blocks; quoted names too."""
    header = "label," + ",".join(f"a_very_long_pixel_column_name_{i}" for i in range(4)) + "\n"
    body = "".join(f'"{name}",1,2,3,4\n' for name in ("b", "a", "c", "b"))
    path = tmp_path / "wide.csv"
    path.write_text(header + body)
    layout = CsvLayout(4, 3, header=True, label_column="label", class_names=("a", "b", "c"))
    table = read_image_csv(path, layout, block_bytes=64)
    assert table.labels.tolist() == [1, 0, 2, 1]
    headerless = tmp_path / "headerless.csv"
    headerless.write_text(body)
    layout = CsvLayout(4, 3, header=False, label_column="first", class_names=("a", "b", "c"))
    assert read_image_csv(headerless, layout).labels.tolist() == [1, 0, 2, 1]
