"""statescale: a JAX/Flax framework for scaling-law experiments over parameters, state size and context."""

__version__ = "0.1.0"
