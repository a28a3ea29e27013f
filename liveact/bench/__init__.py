"""Benchmarks: ``cpu`` (FLOPs, the load plan, end-to-end speed by stage), ``gpu`` (the 14B DiT on one
GPU in every speed mode), ``shared`` (what both use); ``python -m liveact.bench`` runs them."""
