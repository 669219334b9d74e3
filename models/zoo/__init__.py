"""Light zoo models (this folder is models/zoo in the repository)."""
