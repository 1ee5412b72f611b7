"""Attention scoring: what the attention does, measured from the attention patterns alone (no intervention).

Query rows, template scores against the ideal pairwise template, the pairing null, test and controls, rows
combined across heads and layers, and scores along training. See :mod:`icr_interp.analysis` for the map.
"""
