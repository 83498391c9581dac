"""Cost before a run: each stage's work, its measured rate, its memory (``vfmtok-pipeline plan``)."""
