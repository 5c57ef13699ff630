"""SMTP ingress: worker process, asyncio protocol shell and the sans-I/O ESMTP session."""
