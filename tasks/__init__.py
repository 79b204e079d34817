"""Task definitions: loading, prompt templates, verbalizers, metrics (one module per task)."""
