"""The pipeline's stage entry points, one module per `dvc.yaml` stage: `python -m mmdistill.stages.NAME`.

Each reads params.yaml, calls the library and writes its artifacts. A project error (bad input, bad params, a
missing artifact, a bad command line) is printed as one line naming the culprit, with exit status 1; set
MMDISTILL_DEBUG=1 for the traceback.
"""
import argparse
import os
import sys

from mmdistill.core.runtime import keep_freed_memory
from mmdistill.core.storage import PipelineError


def run_stage(main) -> None:
    keep_freed_memory()
    try:
        main()
    except PipelineError as exc:
        if os.environ.get("MMDISTILL_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are PipelineErrors (one line, via run_stage) instead of usage text and exit 2."""

    def error(self, message: str):
        raise PipelineError(f"{self.prog}: {message} (see --help)")
