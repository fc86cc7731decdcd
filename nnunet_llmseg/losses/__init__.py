"""Losses, one paper equation per module (USL, cross pseudo-supervision, contrastive, class balance), and what shapes
the teachers' targets before they teach (teacher reliability, teacher cleaning)."""
