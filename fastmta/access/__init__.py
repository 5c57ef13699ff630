"""Who may use fastmta and what they changed: SMTP accounts, admin API tokens, the audit log, and where they are kept."""
