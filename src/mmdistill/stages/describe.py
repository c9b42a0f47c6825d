"""describe: one free-text description per image -> data/annotations/descriptions.parquet
"""
from mmdistill.annotate.descriptions import run as main
from mmdistill.stages import run_stage

if __name__ == "__main__":
    run_stage(main)
