"""The restorer networks: the paper's conditional U-Net, NAFNet, the blocks they share, the family
registry that builds either from its config section, and the conversion of the official weights."""
