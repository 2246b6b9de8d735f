"""Downstream protocols of a pretrained encoder: linear evaluation, kNN retrieval,
semi-supervised training, fine-tuning and transfer, per stream and as a three-stream
ensemble, with reports and figures."""
from scdfast.evaluation.encoders import EncoderSource, load_encoder, random_encoder
from scdfast.evaluation.features import FeatureCache, extract_features
from scdfast.evaluation.finetune import FinetuneResult, finetune
from scdfast.evaluation.knn import KnnResult, knn_classify
from scdfast.evaluation.linear import LinearResult, linear_probe, linear_probe_exact
from scdfast.evaluation.subsets import parse_fraction, stratified_subset

__all__ = ["EncoderSource", "FeatureCache", "FinetuneResult", "KnnResult", "LinearResult", "extract_features",
           "finetune", "knn_classify", "linear_probe", "linear_probe_exact", "load_encoder", "parse_fraction",
           "random_encoder", "stratified_subset"]
