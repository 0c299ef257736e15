"""Image I/O, datasets, the CLIP input transform, synthetic degradations and captioning.

This package imports neither :mod:`daclip` nor :mod:`irsde`.
"""

#: The ten degradation types of the DA-CLIP paper, in the official order. Every
#: dataset, caption file and classifier takes its vocabulary from the config;
#: this is only the default.
DEFAULT_DEGRADATIONS: tuple[str, ...] = (
    "motion-blurry",
    "hazy",
    "jpeg-compressed",
    "low-light",
    "noisy",
    "raindrop",
    "rainy",
    "shadowed",
    "snowy",
    "uncompleted",
)

#: The name of "no degradation": the label of clean identity pairs in stage-2 training
#: (``data.clean_fraction``) and, where a DA-CLIP is trained with it, a vocabulary entry.
CLEAN = "clean"
