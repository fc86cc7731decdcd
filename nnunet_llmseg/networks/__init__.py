"""Network building blocks: text fusion at the bottleneck, text-driven dynamic head, and the plan-built wrappers."""
