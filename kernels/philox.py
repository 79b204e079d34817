"""Counter-based random bits: Philox4x32-10 in pure torch, bit-identical to Triton's `tl.philox`.

The direction z of the perturbation engine is a pure function of (seed, global element index)
in the flat trainable-parameter space. This module fixes that function once, on the CPU or any
torch device, so the Triton kernels (`kernels.sweep`) and the reference (`kernels.reference`)
produce the same z however the parameters are split, placed or sharded:

* Rademacher: element g takes bit `g % 128` of the 128-bit Philox block for counter
  `(g // 128, 0, STREAM_RADEMACHER, 0)`; bit 1 -> z = -1, bit 0 -> z = +1. One Philox call
  serves 128 elements, which is what keeps the sweep at copy bandwidth.
* Gaussian: the four 32-bit words for counter `(g // 4, 0, STREAM_GAUSSIAN, 0)` become four
  uniforms in (0, 1) and, by two Box-Muller transforms, four normals; element g takes normal
  `g % 4`. Bits are identical everywhere; the normals agree to float tolerance (libm here,
  the GPU's approximate sin/cos in the kernels: |dz| <= 2.4e-6 measured over 2^24 draws).
* Stochastic rounding takes word `g % 4` of counter `(g // 4, 0, STREAM_ROUNDING, 0)` as its
  uniform.

Counters are 64-bit element-group indices split into (low, high) 32-bit words, so models far
beyond 2^32 parameters never wrap. The key is the 64-bit seed split the same way.
"""

from __future__ import annotations


import numpy as np
import torch

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
MASK32 = 0xFFFFFFFF

STREAM_RADEMACHER = 0
STREAM_GAUSSIAN = 1
STREAM_ROUNDING = 2

RADEMACHER_GROUP = 128  # elements served by one Philox call
GAUSSIAN_GROUP = 4
TWO_PI = 6.283185307179586
UNIFORM_SCALE = 2.0 ** -24  # 24 random bits -> exactly representable fp32 uniform


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor | int = 0, c2: torch.Tensor | int = 0,
               c3: torch.Tensor | int = 0, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 with key = 64-bit `seed`; counters and outputs are uint32 values held in int64.

    Computed in numpy uint64 (a product of two uint32 fits exactly), which is several times
    faster on the CPU than emulating the 32-bit high product with int64 torch ops.
    """
    device = c0.device
    words = [np.asarray(c.cpu().numpy() if isinstance(c, torch.Tensor) else c, dtype=np.int64)
             for c in (c0, c1, c2, c3)]
    c0, c1, c2, c3 = (np.broadcast_to(w, words[0].shape).astype(np.uint64) & MASK32 for w in words)
    k0, k1 = np.uint64(seed & MASK32), np.uint64((seed >> 32) & MASK32)
    ra, rb = np.uint64(PHILOX_ROUND_A), np.uint64(PHILOX_ROUND_B)
    mask, shift = np.uint64(MASK32), np.uint64(32)
    for _ in range(rounds):
        pb, pa = rb * c2, ra * c0
        c0, c1, c2, c3 = (pb >> shift) ^ c1 ^ k0, pb & mask, (pa >> shift) ^ c3 ^ k1, pa & mask
        k0, k1 = (k0 + np.uint64(PHILOX_KEY_A)) & mask, (k1 + np.uint64(PHILOX_KEY_B)) & mask
    return tuple(torch.from_numpy(c.astype(np.int64)).to(device) for c in (c0, c1, c2, c3))


def _blocks(seed: int, group: torch.Tensor, stream: int) -> torch.Tensor:
    """The four Philox words for each 64-bit group index, stacked on the last dim (int64)."""
    return torch.stack(philox4x32(seed, group & MASK32, group >> 32, stream), dim=-1)


def rademacher_words(seed: int, first_group: int, n_groups: int, device="cpu") -> torch.Tensor:
    """The packed sign words (4 per 128 elements, as int32) of groups [first, first + n)."""
    group = torch.arange(first_group, first_group + n_groups, dtype=torch.int64, device=device)
    words = _blocks(seed, group, STREAM_RADEMACHER)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_signs(words: torch.Tensor) -> torch.Tensor:
    """int32 words [..., 4] -> float32 signs [..., 128]: bit b of word w is element 32 w + b."""
    bits = (words.to(torch.int64)[..., :, None] >> torch.arange(32, device=words.device)) & 1
    return (1 - 2 * bits).flatten(-2).to(torch.float32)


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """uint32 (as int64) -> float32 uniform in (0, 1): the top 24 bits plus half a step."""
    return ((bits >> 8).to(torch.float32) + 0.5) * UNIFORM_SCALE


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = TWO_PI * u2
    return r * torch.cos(theta), r * torch.sin(theta)


def z_reference(seed: int, start: int, n: int, dist: str, device="cpu") -> torch.Tensor:
    """z for global elements [start, start + n) as float32: the definition every kernel matches."""
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=device)
    group_size = RADEMACHER_GROUP if dist == "rademacher" else GAUSSIAN_GROUP
    first, last = start // group_size, (start + n - 1) // group_size
    if dist == "rademacher":
        z = unpack_signs(rademacher_words(seed, first, last - first + 1, device)).flatten()
    else:
        group = torch.arange(first, last + 1, dtype=torch.int64, device=device)
        w = _blocks(seed, group, STREAM_GAUSSIAN)
        n0, n1 = box_muller(uniform_from_bits(w[:, 0]), uniform_from_bits(w[:, 1]))
        n2, n3 = box_muller(uniform_from_bits(w[:, 2]), uniform_from_bits(w[:, 3]))
        z = torch.stack((n0, n1, n2, n3), dim=-1).flatten()
    lo = start - first * group_size
    return z[lo:lo + n]


def rounding_uniform(seed: int, start: int, n: int, device="cpu") -> torch.Tensor:
    """The stochastic-rounding uniforms in (0, 1) for global elements [start, start + n)."""
    first, last = start // 4, (start + n - 1) // 4
    group = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    u = uniform_from_bits(_blocks(seed, group, STREAM_ROUNDING)).flatten()
    return u[start - 4 * first:start - 4 * first + n]


