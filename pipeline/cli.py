"""How every stage's `main()` is run: known failures print one clear message, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.artifacts import sweep_stale_staging
from pipeline.errors import PipelineError


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage (DVC runs it from the project root): first remove what killed runs of any
    stage left half-written, then run it and print an expected failure as one line."""
    if Path("dvc.yaml").is_file():
        sweep_stale_staging(Path.cwd())
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; no partial outputs were kept", file=sys.stderr)
        sys.exit(130)
