"""Multimodal dataset distillation pipeline: one module per DVC stage (`python -m stages.NAME`)."""
