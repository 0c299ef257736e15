"""The project's YAML configs (and open_clip architecture JSONs).

A plain folder in a checkout; installed as the package ``daclip_uir_configs`` (see pyproject.toml) so
that ``irsde.apps.demo.config_path`` finds the tiny configs after a non-editable ``pip install .`` too.
"""
