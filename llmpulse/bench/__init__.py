"""Benchmarks: `llmpulse bench <name>`, each also runnable as `python -m llmpulse.bench.<name>`."""
