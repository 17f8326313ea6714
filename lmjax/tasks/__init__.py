"""What a task is: named tasks, tasks from files, prompts, QA windows, the per-head pipeline, predictions
scored by the field's libraries, generation for scoring, and word-vector benchmarks."""
