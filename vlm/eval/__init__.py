"""Evaluation: zero-shot classification, retrieval, VQA, compositional tests, cost, and the late-vs-early report.

Metrics live apart from the code that runs models (`*_metric.py`, `classification_metrics`,
`two_way_accuracy`), so they can be checked on hand-worked cases.
"""
