"""Image classification pipeline: CSV -> trained models -> HTML report, on DVC and PyTorch.

The library modules live here; the DVC stages' entry points are in `pipeline.stages`.
"""
