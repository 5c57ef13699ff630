"""The admin process: an ASGI app served by granian for operators, dashboards and Prometheus."""
