"""Benchmarks of fedmerge against Flower 1.42 and the machine's limits.

Run each as ``python -m bench.<name> [--quick]``; tables and plots go to bench/results/
(see bench/README.md). Benchmarks only: nothing in aggregation/, client/ or coordinator/
imports this package.
"""
