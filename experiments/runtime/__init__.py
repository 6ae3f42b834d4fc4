"""Process plumbing of the command-line programs: flags, one-line user errors, host memory,
processes, the workdir lock, progress and training health. Imports jaxdiff, never a CLI or
``experiments.runs``."""
