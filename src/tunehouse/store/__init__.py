"""Store room: jobs, files, events, metrics and models in SQLite (default) or PostgreSQL.

Files live on disk under ``$TUNEHOUSE_HOME/files/<server-id>``. No torch here.
"""

from tunehouse.store.db import Database, default_url

__all__ = ["Database", "default_url"]
