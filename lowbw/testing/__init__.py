"""Harnesses that start real components (Synapse, ...) for tests, benchmarks and the demo.

Nothing here is imported by the proxy or the device at run time; these modules may
depend on packages that only the test extras install (matrix-synapse).
"""
