"""Benchmark harness: every process real and separate, all phases in one run, CPU per role."""
