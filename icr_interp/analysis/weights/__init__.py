"""Weight-only probes: what the memory, QK and OV weights say without running the model on prompts.

See :mod:`icr_interp.analysis` for the map.
"""
