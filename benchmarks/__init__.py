"""Side-by-side benchmarks: `make bench` (python -m benchmarks) prints one table per concern."""
