"""Deployment IDs, deployment records and the versioned model repository (local or S3).

The bottom layer: it imports neither serving nor plugin, and Metaflow only lazily.
"""
