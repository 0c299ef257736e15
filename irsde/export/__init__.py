"""Sharing and deploying a trained restorer: the self-contained model folder with its model card
(``folder``, ``card``), the ONNX graphs (``onnx``) and the numpy/onnxruntime runner that restores with them
without PyTorch (``runtime``). Reading a folder back is :mod:`irsde.inference.pretrained`."""
