"""tag: image tags per image -> data/annotations/tags.parquet
"""
from mmdistill.annotate.tags import run as main
from mmdistill.stages import run_stage

if __name__ == "__main__":
    run_stage(main)
