"""How every stage's `main()` is run: known failures print one clear message, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.artifacts import ArtifactError
from pipeline.download import DownloadError
from pipeline.ingest import DataError
from pipeline.params import ParamsError

EXPECTED_ERRORS = (ArtifactError, DataError, DownloadError, ParamsError)


def run_stage(main: Callable[[], None]) -> None:
    try:
        main()
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; no partial outputs were kept", file=sys.stderr)
        sys.exit(130)
