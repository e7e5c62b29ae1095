"""The serving node: Triton's HTTP protocol over a model repository, every response stamped.

Nothing here imports Metaflow: the node must start without it.
"""
