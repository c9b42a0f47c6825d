"""The pipeline's stage entry points, one module per `dvc.yaml` stage: `python -m mmdistill.stages.NAME`.

Each reads params.yaml, calls the library and writes its artifacts. A project error (bad input, bad params, a
missing artifact) is printed as one line naming the culprit, with exit status 1; set MMDISTILL_DEBUG=1 for the
traceback.
"""
import os
import sys

from mmdistill.core.storage import PipelineError


def run_stage(main) -> None:
    try:
        main()
    except PipelineError as exc:
        if os.environ.get("MMDISTILL_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
