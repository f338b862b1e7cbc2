"""Counter-based random numbers: splitmix64 (Steele et al. 2014), vectorised over numpy.

A draw is a pure function of its key and counter, so it never depends on what else is drawn, in what
order, or on how many processes do the work: the packer (random-next segments), prepare (held-out
documents) and the maskers (every masking decision) all draw this way.
"""

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix(x):
    """splitmix64's finaliser: a bijection of uint64 that looks random (x: uint64 array)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(seed, index, stream):
    """Uniform [0, 1) floats, one per `index` (uint64 array), from a key mixed of all three."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * GOLDEN + index * np.uint64(0xD1B54A32D192ED03)
             + np.uint64(stream) * np.uint64(0x8CB92BA72F3D8DD7))
    return (mix(x) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
