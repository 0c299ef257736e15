"""Stage 2, the restorers, in layers by role (each imports only the layers listed before it):

- ``diffusion``: the IR-SDE maths (schedules, marginals, posterior) and the samplers;
- ``models``: the networks (conditional U-Net, NAFNet, shared blocks), the family registry, official weights;
- ``inference``: the restoration pipeline, tiling, restoring files and folders, model folders;
- ``export``: sharing and deploying a restorer: the exported folder and its model card, the ONNX graphs and
  the PyTorch-free onnxruntime runner;
- ``evaluation``: metrics and the per-degradation evaluation of a test set;
- ``training``: stage 2's losses and its training stage on the shared run lifecycle;
- ``apps``: the embedded demo, the web app and the sampler benchmark.
"""
