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
