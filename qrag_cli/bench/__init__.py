"""Benchmarks: task generators and runners (`qrag bench`)."""
