"""Runnable fine-tuning examples: `python -m biomed_jax.examples.finetune_ner|finetune_hoc --help`."""
