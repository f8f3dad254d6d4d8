"""The float tensors of the image being validated, for validators called with BasicSR's uint8 images.

BasicSR's ``nondist_validation`` converts each output to a uint8 BGR array and calls every metric with it
(``calculate_metric``). The plugin's SR models wrap that loop in ``collecting()`` and ``record`` the
output (and ground truth) tensors in [0, 1] from ``get_current_visuals``; ``calculate_iqa`` then scores
those tensors directly (no uint8 rounding) when their size matches the image it was given. Outside the
plugin's models nothing is recorded and the validators use the uint8 images, as any BasicSR metric does.

Models may record extras with the image (the multi-GT models record ``gt_positives``, the positive ground
truths that ``calculate_multigt`` averages over); ``substitute_gt`` swaps the recorded ground truth while
one of them is scored.
"""
import threading
from contextlib import contextmanager

_state = threading.local()


@contextmanager
def collecting():
    """Enable ``record`` for the duration of one validation loop."""
    _state.active, _state.current, _state.extras = True, None, {}
    try:
        yield
    finally:
        _state.active, _state.current, _state.extras = False, None, {}


def record(result, gt=None, **extras):
    """Keep the current output (1, C, H, W), ground truth (or None) and extras, when collecting."""
    if getattr(_state, 'active', False):
        _state.current = (result, gt)
        _state.extras = extras


def lookup(img):
    """(result, gt) recorded for the HWC image ``img`` (same height and width), else None."""
    current = getattr(_state, 'current', None)
    if current is None or tuple(current[0].shape[-2:]) != tuple(img.shape[:2]):
        return None
    return current


def extras(img):
    """The extras recorded with ``img`` (same height and width), else an empty dict."""
    return dict(getattr(_state, 'extras', {}) or {}) if lookup(img) is not None else {}


@contextmanager
def substitute_gt(gt):
    """Within the block, the recorded ground truth is ``gt`` (1, C, H, W)."""
    current = getattr(_state, 'current', None)
    if current is None:
        yield
        return
    _state.current = (current[0], gt)
    try:
        yield
    finally:
        _state.current = current
