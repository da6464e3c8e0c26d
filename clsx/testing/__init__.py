"""Tiny offline models and a local S3 server for tests and benchmarks."""
