"""Runnable fine-tuning examples: `python -m biomed_jax.examples.finetune_ner|finetune_hoc --help`.

`SAMPLE_DATA` holds a few real records of each corpus in the layout `--data` reads (BC5CDR:
8 train, 8 dev, 4 test articles; HoC: 128 train, 32 test sentences; from the public
microsoft/BioGPT repository, MIT): enough to run an example end to end, not to learn the task.
"""

from pathlib import Path

SAMPLE_DATA = Path(__file__).resolve().parent / "data"  # bc5cdr/, hoc/
