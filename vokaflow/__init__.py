"""VokaFlow: a Django service that runs Celery tasks by priority and worker type.

Importing the package has no side effects: `vokaflow.locks` and `vokaflow.core` work in any
script. The Celery app lives in `vokaflow.celery` (`celery -A vokaflow` finds it there) and is
created when something first imports that module (tasks.apps does, at Django start).
"""
