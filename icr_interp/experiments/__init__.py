"""The experiments layer: sweeps of run configs (local or Ray), the sample-complexity search and its fits, and
the analyses the probe scripts run on checkpoints.
"""
