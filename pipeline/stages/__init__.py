"""One module per DVC stage: its Prefect flow and tasks, and nothing another stage imports."""
