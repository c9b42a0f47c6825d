"""ground: object instances (box + mask) per image -> data/annotations/instances.parquet
"""
from mmdistill.annotate.grounding import run as main
from mmdistill.stages import run_stage

if __name__ == "__main__":
    run_stage(main)
