"""Torch-free code shared by every stage: class names, palettes and the model metadata record."""
