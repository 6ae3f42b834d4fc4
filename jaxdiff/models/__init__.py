"""Flax modules; each is called as ``model.apply(variables, x_t, t, cond, train=...)``."""
