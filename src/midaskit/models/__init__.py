"""midaskit's own implementations of every official MiDaS architecture (no timm, no torch.hub)."""
