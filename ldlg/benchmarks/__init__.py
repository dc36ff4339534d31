"""Benchmarks that print numbers: quality (end to end) and speed."""
