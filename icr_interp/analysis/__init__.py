"""The analysis layer: hook-based measurements on any TransformerLens model and a batch with its layout.

Grouped by what a measurement reads (issue 29): the subpackages form a layered contract of their own
(pyproject.toml), so a causal analysis may use attention scores but never the reverse.

* :mod:`scoring` -- **attention scoring**: what the attention does, read from the patterns alone. Query rows
  (:mod:`~scoring.attention`), template scores (:mod:`~scoring.templates`, :mod:`~scoring.template_table`), the
  pairwise form and its null (:mod:`~scoring.pairwise_form`, :mod:`~scoring.pairing_null`), the pairing test
  and its controls (:mod:`~scoring.pairing_test`, :mod:`~scoring.adjacency_control`,
  :mod:`~scoring.position_control`, :mod:`~scoring.pairing_evidence`), rows combined across heads and layers
  (:mod:`~scoring.combined_rows`, :mod:`~scoring.composed_pairing`), and scores along training
  (:mod:`~scoring.dynamics`).
* :mod:`causal` -- **causal analyses**: what changes when the model is intervened on. Activation patching
  (:mod:`~causal.patching`), ablations (:mod:`~causal.ablation`), the circuit summary
  (:mod:`~causal.circuit`, :mod:`~causal.circuit_series`), when a normalised value can be trusted
  (:mod:`~causal.reliability`), function vectors (:mod:`~causal.function_vectors`), the causal template test
  (:mod:`~causal.causal_template`), edge knockouts and binding interchange (:mod:`~causal.edge_knockout`,
  :mod:`~causal.binding`), the pairing verdict that weighs them (:mod:`~causal.pairing_verdict`), and which
  head or layer does which job (:mod:`~causal.job_split`).
* :mod:`weights` -- **weight-only probes**: what the weights say without a forward pass
  (:mod:`~weights.weight_probes`, :mod:`~weights.ov_readout`).
* Shared by all three, at this level: the input check (:mod:`inputs`), small statistics (:mod:`stats`,
  :mod:`bootstrap`) and behaviour against its baselines (:mod:`recall`).
"""


def __getattr__(name: str):
    """``ii.analysis.templates`` and the other modules that moved into a group still resolve, with a warning."""
    from icr_interp._moved import submodule_attr

    return submodule_attr(__name__, name)
