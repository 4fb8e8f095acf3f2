"""Triton kernels of inik, installed as ``inik.kernels``."""
