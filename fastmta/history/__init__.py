"""History: message history and events in SQL (SQLite in data_dir, or PostgreSQL), its schema and migrations."""
