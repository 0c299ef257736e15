"""DA-CLIP: a degradation-aware CLIP built by controlling a frozen open_clip model.

Also home of the small experiment plumbing both training stages share
(:mod:`daclip.utils`): typed YAML configs, seeding, devices, distributed
setup, checkpoint I/O and run folders.
"""
