"""Benchmarks: cqrsctl against the `eventsourcing` library and the bare drivers.

Run with ``python -m bench`` (see bench/README.md). Each measurement lives in
``bench/measures/<name>.py`` as one small function per contender.
"""
