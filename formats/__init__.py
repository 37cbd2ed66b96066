"""The formats the project reads, kept apart from the method: models as published (Hub ids and
local folders, tokenizers, the score-model layouts) in formats/models.py, and data files (JSON,
JSON Lines, parquet, CSV, Hub data sets) in formats/files.py."""
