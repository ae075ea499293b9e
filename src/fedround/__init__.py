"""fedround: federated learning research in JAX, one jitted round at a time."""
__version__ = '0.1.0'
