"""explora_geo.tasks."""
