"""explora_geo.ssl."""
