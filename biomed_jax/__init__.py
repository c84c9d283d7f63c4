"""biomed_jax: BiomedBERT and BioGPT in JAX/Flax."""
