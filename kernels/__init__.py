"""Triton kernels, installed as scdfast.kernels."""
