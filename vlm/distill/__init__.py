"""Compression commands above the trainer: `vlm distill`, `vlm shrink`, `vlm distill-report` (issue 26)."""
