"""Benchmarks, soaks and the reference implementations they time against: measuring only, never used by a stage.

One module per thing measured (`vlm bench ...`, vlm/bench/cli.py): `data`, `serve` (and `soak`), `eval`, `encode`,
`score` (their inputs and report format in `inputs`), `train` (its reference steps in `train_reference`), and the
shared side-by-side timing in `timing`. This package sits above the stages: it imports them, and no module under
vlm/models, vlm/train, vlm/eval, vlm/serve, vlm/index or data_pipelines imports it.
"""
