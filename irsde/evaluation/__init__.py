"""Evaluation as papers do it: PSNR/SSIM/LPIPS/FID and the per-degradation evaluation of a test set."""
