"""Training room: torch, transformers and peft live here."""
