"""Perturbation kernels (Triton) and their pure-torch references; see `zoexp.perturb`."""
