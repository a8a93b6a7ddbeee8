"""On-demand benchmarks; ``python -m bench`` runs them all and writes docs/benchmarks.md."""
