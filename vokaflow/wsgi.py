"""WSGI entry point (gunicorn vokaflow.wsgi)."""

import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vokaflow.settings")
application = get_wsgi_application()

from vokaflow.chunked import ChunkedBodyMiddleware  # noqa: E402  (needs the settings above)

application = ChunkedBodyMiddleware(application)

# With `gunicorn --preload` this runs once, in the master: import every view now (Django would on
# each worker's first request) and keep those objects out of the garbage collector's scans, so
# the forked web workers share the pages instead of copying them (bench/memory.py).
get_resolver().check()  # imports the URL configuration and every view
gc.freeze()
