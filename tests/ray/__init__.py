"""Tests of the Ray Serve application (deploy/ray): unit, one-node smoke, multi-node cluster (-m cluster)."""
