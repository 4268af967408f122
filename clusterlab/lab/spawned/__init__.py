"""Code that runs inside the processes the lab starts, never in the runner's own: the target's
primary and workers (``target``, ``endpoints``) and locust's user class (``locustfile``)."""
