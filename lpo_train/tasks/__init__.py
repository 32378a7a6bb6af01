"""Task builders: the synthetic toy world, and real tasks for small real models."""
