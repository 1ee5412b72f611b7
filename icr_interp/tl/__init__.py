"""The TransformerLens layer: which line (3.x or 4.x) is installed, and on 4.x a mirror of 3.9's
``HookedTransformer`` (:mod:`icr_interp.tl.mirror`). Everything else imports TransformerLens types from
:mod:`icr_interp.tl.compat`.
"""
