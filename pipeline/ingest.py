"""Read a CSV of labelled images into uint8 arrays, validating every cell.

The file is read in blocks of whole lines into arrays preallocated from a line count, so memory
stays at the final uint8 arrays plus a few block-sized buffers whatever the file size. Each block
goes down three paths until one accepts it:

1. digits: numpy parses the bytes in place (fields of 1-3 digits, commas, newlines, the exact
   field count per row, every value in range). This is what clean files take, much faster than
   pandas.read_csv and without its int64 frame (docs/performance.md, "CSV reading").
2. pandas: the C parser with integer dtypes, for clean blocks with spaces or longer fields.
3. exact: line by line in Python, which names the file, the 1-based line, the column, the value
   and what was expected (or drops the row, counted by reason).

Accepted as valid: a UTF-8 BOM, CRLF line endings, a missing final newline, spaces around values,
blank lines (skipped and counted), gzip-compressed files. Refused (or dropped, counted by reason,
when `on_bad_row` is "drop"): too many or too few fields, empty, non-numeric or fractional cells,
pixels outside 0..max_pixel, labels outside the class set.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from pipeline.cores import usable_cores
from pipeline.datasets import PIXEL_MAX, CsvLayout
from pipeline.errors import PipelineError

# Blocks parse in this many threads (the cores, up to 4; the parsing is numpy calls that release
# the GIL), in blocks small enough to keep each parse's index arrays near 1 MB
# (docs/performance.md, "CSV reading").
BLOCK_BYTES = 1 << 18
PARSE_THREADS = min(4, usable_cores())
_PAD = b"\n\n\n\n"  # lets the digits path look 4 bytes back from the first field
_COMMA, _NEWLINE, _ZERO, _NINE = ord(","), ord("\n"), ord("0"), ord("9")
_CLEAN_BYTES = b"0123456789,\n\r \t"
_BOM = b"\xef\xbb\xbf"
MAX_ERRORS_KEPT = 20
ARCHIVES = ((b"PK\x03\x04", "a ZIP archive"), (b"BZh", "a bzip2 archive"),
            (b"\xfd7zXZ\x00", "an xz archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
            (b"\x28\xb5\x2f\xfd", "a Zstandard archive"), (b"Rar!", "a RAR archive"))


class DataError(PipelineError, ValueError):
    """The CSV does not match the declared layout; the message says where and how to fix it."""


@dataclass
class Quality:
    """What reading one file found: the counts go into data/prepared/<dataset>/quality.json."""

    file: str
    lines: int = 0
    rows_read: int = 0
    rows_kept: int = 0
    blank_lines: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "blank_lines": self.blank_lines,
            "dropped_examples": self.examples,
        }


@dataclass(frozen=True)
class ImageTable:
    images: np.ndarray  # (N, num_pixels) uint8, scaled to 0..255
    labels: np.ndarray  # (N,) int64
    quality: Quality


class _BadRow(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _open_bytes(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")


class _LineTooLong(Exception):
    def __init__(self, line_no: int, length: int, has_cr: bool):
        super().__init__(line_no)
        self.line_no, self.length, self.has_cr = line_no, length, has_cr


def max_line_bytes(layout: CsvLayout) -> int:
    """The longest line a file of this layout may have: 16 bytes a field plus 64 KiB of slack
    (a Kaggle-layout Fashion-MNIST row is ~2 KB). Longer lines are refused before they are
    buffered, so one pathological line cannot take the memory or time of the whole file."""
    return 64 * 1024 + 16 * (layout.num_pixels + 1)


def _blocks(handle: BinaryIO, block_bytes: int, max_line: int) -> Iterator[tuple[bytes, int]]:
    """Yield (block, its line count) for blocks that end on a line boundary (a final line
    without a newline gets one)."""
    carry = b""
    lines_before = 0
    while True:
        chunk = handle.read(block_bytes)
        if not chunk:
            break
        cut = chunk.rfind(b"\n")
        if cut == -1:
            carry += chunk
            if len(carry) > max_line:
                raise _LineTooLong(lines_before + 1, len(carry), b"\r" in carry)
            continue
        data = carry + chunk[: cut + 1]
        carry = chunk[cut + 1 :]
        # numpy counts them faster than bytes.count, time the reading thread otherwise takes
        # from the parsing ones (docs/performance.md)
        lines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE))
        if len(data) > max_line * lines:  # only then can one of its lines be too long
            start = 0
            for offset in range(lines):
                end = data.index(b"\n", start)
                if end - start > max_line:
                    raise _LineTooLong(lines_before + offset + 1, end - start,
                                       b"\r" in data[start:end])
                start = end + 1
        lines_before += lines
        yield data, lines
    if len(carry) > max_line:
        raise _LineTooLong(lines_before + 1, len(carry), b"\r" in carry)
    if carry.strip():
        yield carry + b"\n", 1


def _row_capacity(path: Path, block_bytes: int, layout: CsvLayout) -> int:
    """An upper bound on the data rows, to size the arrays: a row takes at least 2 bytes a
    field, so the text's bytes bound the rows, and np.empty's pages take memory only as rows fill
    them (a file of blank lines or one huge line costs nothing). A plain file's size is its text's;
    a gzip file's text is measured by decompressing it once. Sizing by bytes, not lines, spares a
    pass over the file."""
    with _open_bytes(path) as handle:
        if isinstance(handle, gzip.GzipFile):
            size = 0
            while chunk := handle.read(block_bytes):
                size += len(chunk)
        else:
            size = os.fstat(handle.fileno()).st_size
    return size // (2 * (layout.num_pixels + (1 if layout.labelled else 0))) + 1


def _sniff_encoding(path: Path) -> None:
    """Refuse, with the conversion to run, text that is not UTF-8 CSV with \\n line ends."""
    with _open_bytes(path) as handle:
        head = handle.read(1 << 16)
    archive = next((name for magic, name in ARCHIVES if head.startswith(magic)), None)
    if archive is not None:
        raise DataError(f"{path}: {archive}, not a CSV; unpack it and point the dataset at the "
                        "CSV inside (only gzip is read as it is)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head.count(b"\x00") > len(head) // 8:
        raise DataError(
            f"{path}: the file holds NUL bytes: it is UTF-16/UTF-32 text or not text at all; "
            "save it as UTF-8 CSV (e.g. `iconv -f UTF-16 -t UTF-8 in.csv > out.csv`)")
    if b"\x00" in head:  # a few in otherwise ASCII text: say where
        before = head[: head.index(b"\x00")]
        line = before.count(b"\n") + 1
        column = before[before.rfind(b"\n") + 1 :].count(b",") + 1
        raise DataError(f"{path}: line {line}, column {column}: a NUL byte (\\x00) in the "
                        "cell; remove it (e.g. `tr -d '\\000' < in.csv > out.csv`)")
    if b"\r" in head and b"\n" not in head:
        raise DataError(
            f"{path}: lines end with a lone CR (old Mac line endings); convert them to LF, "
            "e.g. `tr '\\r' '\\n' < in.csv > out.csv`")


# An integer cell: ASCII digits with an optional sign. Python's int() also takes "2_5",
# Arabic-Indic and full-width digits, which no CSV writer means as pixel values.
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")


def _not_an_integer(cell: str) -> str:
    """Which kind of non-integer a cell is, for the error message."""
    if not cell.isascii():
        return "non-ASCII value (letters or digits of another script)"
    if re.fullmatch(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)", cell):
        return "fractional value"
    if re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+", cell):
        return "number in exponent notation"
    return "non-numeric value"


def _separator_hint(line: str, fields: int) -> str:
    """When a line with too few commas is full of another separator, say so."""
    for separator, name in ((";", "semicolons"), ("\t", "tabs"), (" ", "spaces"), ("|", "bars")):
        if line.count(separator) >= max(2, 2 * fields):
            return (f"; the line is separated by {name}, not commas: save the file as "
                    "comma-separated CSV")
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _resolve_label_index(layout: CsvLayout, header: list[str] | None, path: Path) -> int:
    ncols = layout.num_pixels + 1
    where = f"{path}, line 1"
    spec = layout.label_column
    if spec == "first":
        return 0
    if spec == "last":
        return ncols - 1
    if isinstance(spec, int):
        if not -ncols <= spec < ncols:
            raise DataError(
                f"{path}: label_column {spec} is outside the {ncols} columns "
                f"(1 label + {layout.num_pixels} pixels); use 0..{ncols - 1}, 'first' or 'last'"
            )
        return spec % ncols
    if header is None:
        raise DataError(
            f"{path}: label_column {spec!r} is a column name but the dataset says header: false; "
            "give the label column as 'first', 'last' or a 0-based index"
        )
    if spec not in header:
        shown = ", ".join(header[:5]) + (", ..." if len(header) > 5 else "")
        raise DataError(
            f"{where}: the header has no label column {spec!r} (it starts: {shown}); "
            "fix the header or set the dataset's label_column"
        )
    return header.index(spec)


def _column_names(header: list[str] | None, label_index: int | None, ncols: int) -> list[str]:
    if header is not None:
        return header
    names, pixel = [], 0
    for index in range(ncols):
        if index == label_index:
            names.append("label")
        else:
            pixel += 1
            names.append(f"pixel{pixel}")
    return names


class _LabelNames:
    """Label cells that name their class (`Pullover`, as many CSV exports write them) turned into
    the class's index in `classes:` before a block is parsed, line for line; a name that is not
    a class is refused with its line (or left for the parser to drop, with on_bad_row: drop)."""

    def __init__(self, path: Path, names: tuple[str, ...], index: int, refuse_unknown: bool):
        self.path, self.names, self.index = path, names, index
        self.codes = {name.encode(): str(i).encode() for i, name in enumerate(names)}
        self.refuse_unknown = refuse_unknown

    @classmethod
    def detect(cls, path: Path, block: bytes, layout: CsvLayout, index: int,
               refuse_unknown: bool) -> _LabelNames | None:
        """Name mode when the first data row's label cell is not an integer."""
        if not layout.class_names:
            return None
        first = next((line for line in block.split(b"\n") if line.strip()), b"")
        cells = first.split(b",")
        if index >= len(cells) or _INTEGER.match(cells[index].strip().decode("utf-8", "replace")):
            return None
        return cls(path, layout.class_names, index, refuse_unknown)

    def __call__(self, block: bytes, first_line: int) -> bytes:
        lines = block.split(b"\n")
        for offset, line in enumerate(lines):
            if not line.strip():
                continue
            cells = line.split(b",")
            if self.index >= len(cells):
                continue  # the parser names the field count
            cell = cells[self.index].strip().strip(b'"')
            code = self.codes.get(cell)
            if code is None:
                if self.refuse_unknown and not _INTEGER.match(cell.decode("utf-8", "replace")):
                    shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
                    raise DataError(
                        f"{self.path}, line {first_line + offset}: label "
                        f"{cell.decode('utf-8', 'replace')[:80]!r} is not one of the dataset's "
                        f"classes ({shown}); add it to `classes:`, or fix the row")
                continue
            cells[self.index] = code
            lines[offset] = b",".join(cells)
        return b"\n".join(lines)


class _Reader:
    def __init__(self, path: Path, layout: CsvLayout, on_bad_row: str):
        self.path = path
        self.layout = layout
        self.on_bad_row = on_bad_row
        self.ncols = layout.num_pixels + (1 if layout.labelled else 0)
        self.quality = Quality(file=path.name)
        self.label_index: int | None = 0 if layout.labelled else None
        self.names: list[str] = []
        self.pixel_columns: np.ndarray = np.arange(1 if layout.labelled else 0, self.ncols)

    # --- header -------------------------------------------------------------------------
    def read_header(self, first_line: bytes) -> bool:
        """Set up column names from line 1. Returns True when line 1 was a header."""
        try:
            text = first_line.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise DataError(
                f"{self.path}, line 1: not UTF-8 text (byte {first_line[error.start]:#04x} at "
                f"position {error.start + 1}); the file is in another encoding, e.g. Latin-1: "
                "convert it with `iconv -f latin1 -t utf-8 in.csv > out.csv`") from None
        fields = [f.strip() for f in text.split(",")]
        names = set(self.layout.class_names)  # a data row may name its class
        looks_like_data = all(_is_number(f) or f.strip('"') in names for f in fields if f) \
            and any(_is_number(f) for f in fields if f)
        if self.layout.header and looks_like_data:
            raise DataError(
                f"{self.path}, line 1: expected a header row but found numbers ({text[:40]}...); "
                "set the dataset's `header: false` if the file has no header"
            )
        if not self.layout.header and not looks_like_data:
            raise DataError(
                f"{self.path}, line 1: found a header-like row ({text[:40]}...) but the dataset "
                "says `header: false`; set `header: true`"
            )
        header = fields if self.layout.header else None
        if header is not None and len(header) != self.ncols:
            raise DataError(
                f"{self.path}, line 1: the header has {len(header)} columns, expected "
                f"{self.ncols} ({self.layout.columns} for the dataset's "
                "shape); check the dataset's `shape` or the file"
                + _separator_hint(text, len(header))
            )
        if header is not None:
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataError(f"{self.path}, line 1: repeated header names {repeated[:5]}")
        if self.layout.labelled:
            self.label_index = _resolve_label_index(self.layout, header, self.path)
        self.names = _column_names(header, self.label_index, self.ncols)
        self.pixel_columns = np.array([i for i in range(self.ncols) if i != self.label_index])
        return header is not None

    # --- one line, exactly ------------------------------------------------------------------
    def _where(self, line_no: int, column: int) -> str:
        return f"{self.path}, line {line_no}, column {column + 1} ({self.names[column]!r})"

    def parse_line(self, line: str, line_no: int) -> np.ndarray:
        fields = line.split(",")
        if len(fields) != self.ncols:
            problem = "too many" if len(fields) > self.ncols else "too few"
            raise _BadRow(
                f"{problem} fields",
                f"{self.path}, line {line_no}: {problem} fields: found {len(fields)}, expected "
                f"{self.ncols} ({self.layout.columns})"
                + _separator_hint(line, len(fields)),
            )
        values = np.empty(self.ncols, dtype=np.int64)
        for column, raw in enumerate(fields):
            cell = raw.strip()
            if cell == "":
                raise _BadRow("empty cell", f"{self._where(line_no, column)}: empty cell; "
                              "expected an integer")
            if not _INTEGER.match(cell):
                kind = _not_an_integer(cell)
                raise _BadRow(kind, f"{self._where(line_no, column)}: {kind} {cell[:40]!r}; "
                              "expected an integer written with the digits 0-9")
            # more than 18 significant digits cannot fit int64, and is out of every range anyway
            significant = cell.lstrip("+-").lstrip("0")
            value = int(cell) if len(significant) <= 18 else 10**18
            self._check_range(value, column, line_no, cell[:40])
            values[column] = value
        return values

    def _check_range(self, value: int, column: int, line_no: int, cell: str) -> None:
        if column == self.label_index:
            if not 0 <= value < self.layout.num_classes:
                raise _BadRow(
                    "label out of range",
                    f"{self._where(line_no, column)}: label {cell!r} is not a class; expected "
                    f"0..{self.layout.num_classes - 1} "
                    f"({self.layout.num_classes} classes declared)",
                )
        elif not 0 <= value <= self.layout.max_pixel:
            raise _BadRow(
                "pixel out of range",
                f"{self._where(line_no, column)}: pixel {cell!r} is outside "
                f"0..{self.layout.max_pixel}; check the dataset's `max_pixel`",
            )

    def _reject(self, bad: _BadRow) -> None:
        if self.on_bad_row == "fail":
            raise DataError(
                f"{bad.message}.\nFix the file, or set prepare.on_bad_row: drop to skip bad rows."
            )
        self.quality.dropped[bad.reason] += 1
        if len(self.quality.examples) < MAX_ERRORS_KEPT:
            self.quality.examples.append(bad.message)

    def parse_block_exact(self, block: bytes, first_line_no: int) -> np.ndarray:
        rows = []
        for offset, raw in enumerate(block.split(b"\n")[:-1]):
            line_no = first_line_no + offset
            if not raw.strip():
                self.quality.blank_lines += 1
                continue
            self.quality.rows_read += 1
            try:
                try:
                    line = raw.decode("utf-8").rstrip("\r")
                except UnicodeDecodeError as error:
                    raise _BadRow("not UTF-8", f"{self.path}, line {line_no}: byte "
                                  f"{raw[error.start]:#04x} at position {error.start + 1} is not "
                                  "UTF-8 text; convert the file to UTF-8 (e.g. `iconv -f latin1 "
                                  "-t utf-8`)") from None
                rows.append(self.parse_line(line, line_no))
            except _BadRow as bad:
                self._reject(bad)
        return np.array(rows, dtype=np.int64).reshape(len(rows), self.ncols)

    # --- a whole block, fast ----------------------------------------------------------------
    def _in_range(self, values: np.ndarray) -> bool:
        if self.label_index is None:
            return not values.size or (values.min() >= 0 and values.max() <= self.layout.max_pixel)
        labels = values[:, self.label_index]
        if labels.size and (labels.min() < 0 or labels.max() >= self.layout.num_classes):
            return False
        if self.label_index == 0:
            pixels = values[:, 1:]
        elif self.label_index == self.ncols - 1:
            pixels = values[:, :-1]
        else:
            pixels = values[:, self.pixel_columns]
        return not pixels.size or (pixels.min() >= 0 and pixels.max() <= self.layout.max_pixel)

    def parse_block_digits(self, block: bytes) -> np.ndarray | None:
        """Parse a block of 1-3 digit fields with numpy; None when it needs another path.
        Reads nothing but the block and the layout, so blocks parse in parallel threads.

        Every byte below '0' is a separator. Each field is read back from the 4 bytes before
        its separator: value = ones + 10 tens + 100 hundreds, where a place counts only if it and
        every place after it are digits. Four bytes of padding in front keep the look-back
        inside the buffer, and one index array serves all 5 gathers (through views of the data
        shifted by 0-3 bytes), less time than an index array per gather.
        """
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        data = np.frombuffer(_PAD + block, dtype=np.uint8)
        if data.max() > _NINE:
            return None
        text = data[len(_PAD):]
        separator_at = np.flatnonzero(text < _ZERO)
        rows = len(separator_at) // self.ncols
        if rows == 0 or len(separator_at) != rows * self.ncols:
            return None
        separators = text[separator_at]
        newline = separators == _NEWLINE
        # exactly one newline per row, as the row's last separator; all others are commas
        row_ends = newline[self.ncols - 1 :: self.ncols]
        if int(np.count_nonzero(newline)) != rows or not row_ends.all():
            return None
        if np.count_nonzero(separators == _COMMA) != len(separators) - rows:
            return None
        before, hundreds, tens, ones = (data[shift:][separator_at] for shift in range(4))
        if (ones < _ZERO).any():  # an empty field or a blank line
            return None
        has_tens = tens >= _ZERO
        has_hundreds = (hundreds >= _ZERO) & has_tens
        if (has_hundreds & (before >= _ZERO)).any():  # 4+ digits: leading zeros or too large
            return None
        values = ones.astype(np.int16) - _ZERO
        values += (tens.astype(np.int16) - _ZERO) * 10 * has_tens
        values += (hundreds.astype(np.int16) - _ZERO) * 100 * has_hundreds
        values = values.reshape(rows, self.ncols)
        if not self._in_range(values):
            return None
        return values

    def parse_block_pandas(self, block: bytes) -> np.ndarray | None:
        """Parse a clean block with pandas; None when the block needs the exact path."""
        if block.translate(None, _CLEAN_BYTES) or b"\n\n" in block or b"\n\r\n" in block:
            return None
        if block.startswith((b"\n", b"\r\n")):
            return None
        # imported here: the stages that only load params (train, evaluate) would pay its import
        import pandas as pd

        try:
            frame = pd.read_csv(io.BytesIO(block), header=None, dtype=np.int32, engine="c",
                                skip_blank_lines=False, na_filter=True)
        except (ValueError, pd.errors.ParserError, OverflowError):
            return None
        values = frame.to_numpy()
        if values.shape[1] != self.ncols or not self._in_range(values):
            return None
        self.quality.rows_read += len(values)
        return values


def _store(values: np.ndarray, label_index: int | None, max_pixel: int,
           images: np.ndarray, labels: np.ndarray) -> None:
    """Copy parsed rows into the preallocated outputs, scaling pixels to 0..255."""
    if label_index is None:
        labels[:] = -1
        pixels = values
    elif label_index == 0:
        labels[:] = values[:, 0]
        pixels = values[:, 1:]
    elif label_index == values.shape[1] - 1:
        labels[:] = values[:, label_index]
        pixels = values[:, :-1]
    else:
        labels[:] = values[:, label_index]
        pixels = np.delete(values, label_index, axis=1)
    if max_pixel == PIXEL_MAX:
        images[:] = pixels
    else:
        images[:] = np.rint(pixels * (PIXEL_MAX / max_pixel))


@contextlib.contextmanager
def _parallel_parser(reader: _Reader) -> Iterator[Callable[[bytes], Future]]:
    """`parse(block)` starts the digits path on a block in a worker thread and returns its
    future; numpy releases the GIL for the work, so blocks parse side by side."""
    if PARSE_THREADS < 2:
        def parse_here(block: bytes) -> Future:
            done: Future = Future()
            done.set_result(reader.parse_block_digits(block))
            return done

        yield parse_here
        return
    with ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="csv-parse") as pool:
        yield lambda block: pool.submit(reader.parse_block_digits, block)


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; run the download stage first (dvc repro)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a CSV of labelled images")
    return path


def _parsed_blocks(path: Path, layout: CsvLayout, reader: _Reader, block_bytes: int,
                   on_bad_row: str) -> Iterator[np.ndarray]:
    """The file's rows, parsed and validated, as integer arrays (rows x fields) of a block of
    lines each, in file order; the reader's quality counts them and `reader.lines` ends as the
    count of lines read. A few blocks are in flight at once (parsed in threads), so memory stays
    at a few blocks whatever the file's size."""
    line_no = 1
    relabel: _LabelNames | None = None
    undecided = True  # whether label cells name their class is decided on the first data line
    next_line = 1  # the line number of the next block's first line
    try:
        _sniff_encoding(path)
        with _open_bytes(path) as handle, _parallel_parser(reader) as parse:
            pending: deque = deque()  # (block, its lines, its digits-path parse) in file order

            def oldest() -> np.ndarray:
                nonlocal line_no
                block, lines, parsed = pending.popleft()
                values = parsed.result()
                if values is not None:
                    reader.quality.rows_read += len(values)
                else:
                    values = reader.parse_block_pandas(block)
                if values is None:
                    values = reader.parse_block_exact(block, line_no)
                line_no += lines
                return values

            for block_index, (block, lines) in enumerate(_blocks(handle, block_bytes,
                                                                 max_line_bytes(layout))):
                if block_index == 0:
                    if block.startswith(_BOM):
                        block = block[len(_BOM):]
                    first_end = block.find(b"\n") + 1
                    while first_end and not block[:first_end].strip():
                        reader.quality.blank_lines += 1
                        line_no += 1
                        lines -= 1
                        block = block[first_end:]
                        first_end = block.find(b"\n") + 1
                    if not block:
                        break
                    if reader.read_header(block[:first_end]):
                        block = block[first_end:]
                        line_no += 1
                        lines -= 1
                    next_line = line_no
                if undecided and reader.label_index is not None and block.strip():
                    # on the first block with a data line (a wide header can fill block 0)
                    relabel = _LabelNames.detect(path, block, layout, reader.label_index,
                                                 on_bad_row == "fail")
                    undecided = False
                if relabel is not None:
                    block = relabel(block, next_line)
                next_line += lines
                pending.append((block, lines, parse(block)))
                if len(pending) > PARSE_THREADS:  # bounded: a few blocks in flight at most
                    yield oldest()
            while pending:
                yield oldest()
    except _LineTooLong as long:
        if long.has_cr:
            raise DataError(
                f"{path}, line {long.line_no}: no line break in {long.length:,} bytes, but CR "
                "characters: the lines end with a lone CR (old Mac line endings); convert them "
                "to LF, e.g. `tr '\\r' '\\n' < in.csv > out.csv`") from None
        raise DataError(
            f"{path}, line {long.line_no}: longer than {max_line_bytes(layout):,} bytes with no "
            f"line break, far more than {layout.num_pixels + 1} fields need; the file is not a "
            "CSV of this dataset's shape (check `shape`, or the file)") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                        "save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read ({type(error).__name__}: {error}); the file is "
                        "truncated or corrupt, download or export it again") from None
    reader.quality.lines = line_no - 1


def _check_read(path: Path, layout: CsvLayout, reader: _Reader, kept: int,
                max_bad_fraction: float) -> None:
    """After the whole file: refuse one with no data rows, or more bad rows than allowed."""
    quality = reader.quality
    quality.rows_kept = kept
    if not reader.names:
        raise DataError(f"{path}: the file is empty; expected a CSV of labelled images")
    if kept == 0:
        raise DataError(
            f"{path}: no data rows{' after the header' if layout.header else ''}"
            + (f" ({quality.rows_read} rows, all dropped)" if quality.rows_read else "")
        )
    dropped = sum(quality.dropped.values())
    if dropped and dropped > max_bad_fraction * quality.rows_read:
        raise DataError(
            f"{path}: {dropped} of {quality.rows_read} rows are bad "
            f"({dropped / quality.rows_read:.1%}, more than prepare.max_bad_fraction = "
            f"{max_bad_fraction:.1%}). First problems:\n  " + "\n  ".join(quality.examples[:5])
        )


def read_image_csv(
    path: str | Path,
    layout: CsvLayout,
    on_bad_row: str = "fail",
    max_bad_fraction: float = 0.0,
    block_bytes: int = BLOCK_BYTES,
) -> ImageTable:
    """Read and validate an image CSV; pixels come back scaled to 0..255 uint8."""
    path = _checked_path(path)
    reader = _Reader(path, layout, on_bad_row)
    filled = 0
    try:
        capacity = _row_capacity(path, block_bytes, layout)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read ({type(error).__name__}: {error}); the file is "
                        "truncated or corrupt, download or export it again") from None
    images = np.empty((capacity, layout.num_pixels), dtype=np.uint8)
    labels = np.empty(capacity, dtype=np.int64)
    for values in _parsed_blocks(path, layout, reader, block_bytes, on_bad_row):
        count = len(values)
        _store(values, reader.label_index, layout.max_pixel,
               images[filled : filled + count], labels[filled : filled + count])
        filled += count
    _check_read(path, layout, reader, filled, max_bad_fraction)
    return ImageTable(images[:filled], labels[:filled], reader.quality)


def iter_image_csv(path: str | Path, layout: CsvLayout, rows: int = 8192,
                   block_bytes: int = BLOCK_BYTES) -> Iterator[ImageTable]:
    """The file as tables of at most about `rows` rows each, validated as `read_image_csv`
    validates (every bad row refused), in memory bounded by one table and a few blocks whatever
    the file's size: for classifying a file too large to hold (pipeline-predict)."""
    path = _checked_path(path)
    reader = _Reader(path, layout, "fail")
    kept = 0
    gathered: list[np.ndarray] = []

    def table() -> ImageTable:
        values = np.concatenate(gathered)
        gathered.clear()
        images = np.empty((len(values), layout.num_pixels), dtype=np.uint8)
        labels = np.empty(len(values), dtype=np.int64)
        _store(values, reader.label_index, layout.max_pixel, images, labels)
        return ImageTable(images, labels, reader.quality)

    for values in _parsed_blocks(path, layout, reader, block_bytes, "fail"):
        gathered.append(values)
        kept += len(values)
        if sum(len(v) for v in gathered) >= rows:
            yield table()
    if gathered:
        yield table()
    _check_read(path, layout, reader, kept, 0.0)


def row_digests(images: np.ndarray) -> np.ndarray:
    """One 64-bit digest per image, for counting duplicates within and across splits."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
         for row in images],
        dtype=np.uint64,
    )


def duplicate_count(digests: np.ndarray) -> int:
    """How many rows repeat an earlier row."""
    return int(len(digests) - len(np.unique(digests)))
