"""Evaluation: fixed-temperature sweeps, metrics, reports."""
