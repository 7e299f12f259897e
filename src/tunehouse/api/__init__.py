"""API room: HTTP only. ``app.build_app()`` wires the OpenAI-compatible routers (files,
fine-tuning jobs, models, chat completions), the API-key check and the error envelope."""
