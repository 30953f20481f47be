"""VokaFlow's vocabulary: priorities, worker types and their profiles, queue names and the queue
cycle, Redis key names, and the error base. Imports neither Django nor Celery, so any layer,
script or plain Celery task can use it; everything else depends on it, it depends on nothing.
"""
