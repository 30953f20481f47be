"""WSGI entry point (gunicorn vokaflow.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vokaflow.settings")
application = get_wsgi_application()

from vokaflow.chunked import ChunkedBodyMiddleware  # noqa: E402  (needs the settings above)

application = ChunkedBodyMiddleware(application)
