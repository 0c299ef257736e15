"""Experiment plumbing shared by both training stages (no model code here)."""
