"""Applications on top of the library: the embedded demo, the web app and the sampler benchmark."""
