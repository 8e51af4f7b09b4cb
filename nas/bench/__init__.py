"""Benchmarks' library code: the pose ground truth (``posebench``), rank statistics, proxies.

The scripts under ``benchmarks/`` are thin command lines over this package, so that what they
measure can be tested and reused (a search strategy scored on the ground truth imports
``nas.bench.posebench.load_table``).
"""
