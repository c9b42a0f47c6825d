"""caption: a caption per instance and one per whole image -> data/annotations/captions.parquet
"""
from mmdistill.annotate.captions import run as main
from mmdistill.stages import run_stage

if __name__ == "__main__":
    run_stage(main)
