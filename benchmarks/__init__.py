"""pymail benchmarks (see benchmarks/README.md).  Run one with `scripts/bench.sh`."""
