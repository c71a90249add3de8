"""egress's benchmarks. ``python -m bench`` runs the rerunnable one (bench/README.md)."""
