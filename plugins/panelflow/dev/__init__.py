"""``make run``'s one-machine stack: the supervisor (``local``), the embedded PostgreSQL
(``postgres``) and the demo data (``demo``). Nothing here runs inside a task."""
