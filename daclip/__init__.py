"""DA-CLIP: a degradation-aware CLIP built by controlling a frozen open_clip model.

Also home of the framework core every part of the project uses (:mod:`daclip.engine`): typed YAML
configs, the run lifecycle both training stages share, run folders, seeding, distributed setup,
checkpoint I/O and the scripts' error handling.
"""
