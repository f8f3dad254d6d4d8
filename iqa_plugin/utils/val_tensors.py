"""The float tensors of the image being validated, for validators called with BasicSR's uint8 images.

BasicSR's ``nondist_validation`` converts each output to a uint8 BGR array and calls every metric with it
(``calculate_metric``). The plugin's SR models wrap that loop in ``collecting()`` and ``record`` the
output (and ground truth) tensors in [0, 1] from ``get_current_visuals``; ``calculate_iqa`` then scores
those tensors directly (no uint8 rounding) when their size matches the image it was given. Outside the
plugin's models nothing is recorded and the validators use the uint8 images, as any BasicSR metric does.
"""
import threading
from contextlib import contextmanager

_state = threading.local()


@contextmanager
def collecting():
    """Enable ``record`` for the duration of one validation loop."""
    _state.active, _state.current = True, None
    try:
        yield
    finally:
        _state.active, _state.current = False, None


def record(result, gt=None):
    """Keep the current output (1, C, H, W) and ground truth (or None), when collecting."""
    if getattr(_state, 'active', False):
        _state.current = (result, gt)


def lookup(img):
    """(result, gt) recorded for the HWC image ``img`` (same height and width), else None."""
    current = getattr(_state, 'current', None)
    if current is None or tuple(current[0].shape[-2:]) != tuple(img.shape[:2]):
        return None
    return current
