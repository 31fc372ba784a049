"""Manual-backprop neural-network building blocks: functional pairs, modules, gradient checks."""
