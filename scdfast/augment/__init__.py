"""View generation for pretraining and evaluation (NumPy reference)."""
from scdfast.augment.reference import (
    ViewDraws,
    draw_views,
    eval_views,
    make_view,
    make_views,
)

__all__ = ["ViewDraws", "draw_views", "eval_views", "make_view", "make_views"]
