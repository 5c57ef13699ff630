"""The web console at /ui: server-rendered pages over the functions the JSON API answers from, for a person with an API token."""
