"""BioGPT's downstream tasks as in the paper: PubMedQA, BC5CDR / DDI / KD-DTI relation
extraction and HoC classification, from the repo's data files to its scores."""

from biomed_jax.tasks.data import Dataset, Example
from biomed_jax.tasks.prompting import TaskSettings, output_line, prompt_ids
from biomed_jax.tasks.results import Interrupted
from biomed_jax.tasks.runner import (
    TASKS,
    Task,
    generate_answers,
    get_task,
    run_task,
    task_settings,
)

__all__ = [
    "TASKS",
    "Dataset",
    "Example",
    "Interrupted",
    "Task",
    "TaskSettings",
    "generate_answers",
    "get_task",
    "output_line",
    "prompt_ids",
    "run_task",
    "task_settings",
]
