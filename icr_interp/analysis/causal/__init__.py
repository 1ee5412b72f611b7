"""Causal analyses: what changes when the model is intervened on (patching, ablation, knockouts, interchange).

Each reads attention scores from :mod:`icr_interp.analysis.scoring` where it needs them, never the reverse.
See :mod:`icr_interp.analysis` for the map.
"""
