"""django-redis connections made by vokaflow.redis, so the cache follows REDIS_URL in every form."""

from django.conf import settings
from django_redis.pool import ConnectionFactory

from vokaflow.redis_connect import client_from_url


class CacheConnectionFactory(ConnectionFactory):
    def connect(self, url: str):
        return client_from_url(url, sentinel_master=settings.VOKAFLOW_REDIS_SENTINEL_MASTER,
                               timeout=settings.VOKAFLOW_BROKER_TIMEOUT)
