"""The ZO estimate on a quadratic, against the closed form, and the memory invariant."""

from __future__ import annotations

import math

import pytest
import torch

from zoexp.perturb import PerturbationEngine


def test_mezo_estimate_is_unbiased_on_a_quadratic():
    """f(t) = 1/2 t^T A t: the central difference is exact, so g_hat = z z^T A t.

    E[g_hat] = A t, and for Gaussian z, E||g_hat - A t||^2 = (d + 1) ||A t||^2; the mean of
    N estimates must land within 5 standard errors of the true gradient (fixed seeds)."""
    torch.manual_seed(0)
    d, n, eps = 20, 4000, 1e-3
    m = torch.randn(d, d, dtype=torch.float64)
    a = m @ m.T / d + torch.eye(d, dtype=torch.float64)
    theta = torch.randn(d, dtype=torch.float64)
    true_grad = a @ theta
    param = theta.clone()
    engine = PerturbationEngine([param], dist="gaussian")
    f = lambda: 0.5 * float(param @ a @ param)  # noqa: E731
    total = torch.zeros(d, dtype=torch.float64)
    for seed in range(n):
        engine.perturb(seed, eps)
        plus = f()
        engine.move(seed, eps, -eps)
        minus = f()
        engine.restore(seed, -eps)
        g = (plus - minus) / (2 * eps)
        engine.update(seed, g)           # param += g z: accumulate g z into a scratch copy
        total += param - theta
        param.copy_(theta)
    mean = total / n
    bound = 5 * math.sqrt((d + 1) * float(true_grad @ true_grad) / n)
    assert float((mean - true_grad).norm()) < bound
    # and a wrong gradient (e.g. zero) is far outside that bound, so the test can fail
    assert float(true_grad.norm()) > bound


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_perturb_restore_allocates_nothing_parameter_sized(dist):
    """Invariant 1: no allocation during perturb / move / restore / update comes near the size
    of the trainable set (here 8 tensors of 256k fp32 elements = 8 MiB)."""
    params = [torch.zeros(512, 512) for _ in range(8)]
    total_bytes = sum(p.numel() * p.element_size() for p in params)
    engine = PerturbationEngine(params, dist=dist)
    engine.perturb(1, 1e-3)  # warm up any lazy state
    engine.restore(1, 1e-3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        engine.perturb(7, 1e-3)
        engine.move(7, 1e-3, -1e-3)
        engine.restore_and_update(7, -1e-3, -1e-4, 1e-5)
    largest = max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)
    assert largest > 0  # the profiler saw the temporaries, so the check below means something
    assert largest <= total_bytes / 4, f"largest allocation {largest} B vs trainable set {total_bytes} B"
