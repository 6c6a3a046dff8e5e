"""Triton kernels (installed as ``miue.kernels``); filled in by the Triton backend work."""
