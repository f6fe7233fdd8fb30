"""`vlm sweep`: both families over a grid of model sizes x training steps on the shapes world, every ability
against training compute, and the compute at which each first clears its blind baseline."""
