"""The Compose tab: the composition study's pipelines, step by step."""
