"""jcc: deep embedding image clustering based on contrastive learning, in JAX."""

__version__ = '0.1.0'
