"""Data room: record formats, validation, tokenisation and batching. No torch training, no DB."""
