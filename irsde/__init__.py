"""IR-SDE: mean-reverting SDE image restoration with a DA-CLIP-conditioned U-Net."""
