"""Crop re-identification networks: IDE, MLFN and GLAD (docs/reid.md)."""
