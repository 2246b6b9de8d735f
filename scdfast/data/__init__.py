"""Skeleton datasets: the synthetic default and array directories."""
from scdfast.data.dataset import load_dataset, load_split, load_training_split, validate
from scdfast.data.synthetic import SkeletonSet, generate, synthetic_splits

__all__ = ["SkeletonSet", "generate", "load_dataset", "load_split", "load_training_split", "synthetic_splits",
           "validate"]
