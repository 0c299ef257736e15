"""Restoring images: the one restoration pipeline, tiling, and restoring files and folders."""
