"""The analysis layer: hook-based measurements on any TransformerLens model and a batch with its layout.

Attention rows (:mod:`attention`), template scores and their pairing null (:mod:`templates`,
:mod:`pairing_null`, :mod:`combined_rows`), when a verdict is reliable (:mod:`reliability`, :mod:`stats`),
activation patching (:mod:`patching`), ablations (:mod:`ablation`), the circuit summary (:mod:`circuit`),
heads and layers (:mod:`job_split`) and template scores along training (:mod:`dynamics`).
"""
