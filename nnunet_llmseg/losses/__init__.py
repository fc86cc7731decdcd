"""Losses, one paper equation per module (USL, cross pseudo-supervision, contrastive, class balance)."""
