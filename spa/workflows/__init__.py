"""The pipeline, written once (:mod:`spa.workflows.run`), and the commands built on it."""
