"""The one base class of every error the pipeline expects and explains.

Each library module derives its own error from `PipelineError`; the stage runner
(`pipeline.cli.run_stage`) catches this base and prints the message as one line, no traceback.
A stage run as `python -m pipeline.stages.X` imports its errors from these library modules, so
the class it raises is the class the runner catches.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: the message names the file, line or key and says how."""
