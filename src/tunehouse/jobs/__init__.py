"""Jobs room: the only room that chains data -> train -> register model for fine-tuning jobs.

``worker.py`` claims jobs (lease + heartbeat + attempt) and runs ``runner.py`` in a child
process per attempt; ``pool.py`` keeps ``tunehouse serve``'s workers alive.
"""
