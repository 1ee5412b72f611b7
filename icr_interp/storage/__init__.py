"""The storage layer: atomic writes and file locks (:mod:`fsio`), safetensors + JSON checkpoints
(:mod:`checkpoint`). The only layer that renames files into place.
"""
