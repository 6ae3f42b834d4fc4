"""Process plumbing of the command-line programs: flag registration (``flag_defs``),
one-line user errors (``errors``), host memory, processes (``multihost``), the workdir lock,
progress, training health and the checks of what a user types (``user_input``). Imports
jaxdiff and its own modules, never a CLI or ``experiments.runs``."""
