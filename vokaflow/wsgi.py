"""WSGI entry point (gunicorn vokaflow.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vokaflow.settings")
application = get_wsgi_application()
