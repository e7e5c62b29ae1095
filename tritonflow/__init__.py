"""tritonflow: Metaflow runs -> Triton model repositories -> stamped serving -> lineage."""

__version__ = "0.1.0"
