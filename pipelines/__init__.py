"""Item pipelines of the crawler project."""
