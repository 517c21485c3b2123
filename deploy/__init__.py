"""Deployment targets that are Python code (``deploy.ray``); the other folders hold manifests."""
