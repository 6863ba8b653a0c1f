"""How every stage's `main()` is run: known failures print one clear message, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run_stage(main: Callable[[], None]) -> None:
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; no partial outputs were kept", file=sys.stderr)
        sys.exit(130)
