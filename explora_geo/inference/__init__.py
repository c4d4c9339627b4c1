"""explora_geo.inference."""
