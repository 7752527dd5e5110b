"""A run of a recipe: config (Hydra compose, type checks), building the student and synthesizer, the run folder,
trainer, callbacks, console, export, plug-ins and the command line."""
