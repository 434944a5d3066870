"""Where `celery -A newsletter.tasks worker` finds the workers' Celery app.

The app and its task live in send/tasks.py; this name is what Celery's command line
and existing deployments know.
"""

from newsletter.send.tasks import app

__all__ = ["app"]
