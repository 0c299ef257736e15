"""The framework core that every part of the project uses (no model code here).

Both training stages (``daclip.train``, ``irsde.training``), inference and evaluation
(``irsde.inference``, ``irsde.evaluation``) and every script build on it:

- ``config``: typed YAML configs (one dataclass tree per stage, ``key.sub=value`` overrides, errors
  that name the key);
- ``lifecycle``: the one training run lifecycle (setup, resume, step loop, logging, checkpoints,
  validation, cleanup) that a stage plugs into;
- ``run_folder``: run folders, resume planning, the saved config and command, logging;
- ``runtime``: seeding, precision, the non-finite-loss rule;
- ``checkpoint``: atomic checkpoint writes, safe loading, RNG states;
- ``distributed``: torchrun setup and collectives;
- ``preflight``: checks made before a run writes anything;
- ``optim``: learning-rate schedules;
- ``cli``: the scripts' one-line errors (exit code 2), bounded progress bars, argparse types;
- ``errors``: :class:`~daclip.engine.errors.UserError`, the one exception type for user mistakes.

It lives under ``daclip/`` because the project's top-level folders are fixed.
"""
