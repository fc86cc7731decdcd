"""prior_generation: LLM-written anatomical knowledge per dataset class, encoded by a text encoder."""
