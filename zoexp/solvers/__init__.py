"""Solvers: each owns one optimisation step; every method runs through the same loop."""
