"""Workflows: training, fine-tuning, export, benchmarks, tracking, and the same on Ray."""
