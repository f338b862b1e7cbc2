"""Counter-based random numbers for the data stages that pick whole units (documents, regions):
a draw is a pure function of (seed, index, stream), so it never depends on what else is drawn, in
what order, or on how many processes do the work."""

import numpy as np


def uniform(seed, index, stream):
    """Uniform [0, 1) floats, one per `index` (uint64 array): splitmix64 of a key mixed from all three."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             + index * np.uint64(0xD1B54A32D192ED03) + np.uint64(stream) * np.uint64(0x8CB92BA72F3D8DD7))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
