"""Content scanning of inbound mail: the spamd and clamd clients, the verdict, and the scanner that runs them."""
