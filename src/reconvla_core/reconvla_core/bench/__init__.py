"""Benchmarks (`reconvla bench ...`): each module measures one part and returns a JSON-able dict.

A benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> dict``. Benchmarks
measure; they never fail on time. Ratios are measured side by side in one run.
"""
