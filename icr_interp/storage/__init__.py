"""The storage layer: atomic writes and the deletion rule (:mod:`atomic`), locks (:mod:`locks`), strict JSON
(:mod:`jsonio`), path and size preflight (:mod:`preflight`), safetensors + JSON checkpoints (:mod:`checkpoint`).
The only layer that renames files into place (the old ``fsio`` facade is an alias of :mod:`atomic`, icr_interp._moved).
"""
