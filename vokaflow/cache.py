"""django-redis connections made by vokaflow.redis, so the cache follows REDIS_URL in every form."""

from django.conf import settings
from django_redis.pool import ConnectionFactory

from vokaflow.redis_connect import client_from_url, is_cluster


class CacheConnectionFactory(ConnectionFactory):
    def connect(self, url: str):
        # django-redis splits LOCATION at commas, as a list of servers: a rediscluster:// URL names
        # several nodes of one cluster, and every "server" is that cluster.
        if is_cluster(settings.REDIS_URL):
            url = settings.REDIS_URL
        return client_from_url(url, sentinel_master=settings.VOKAFLOW_REDIS_SENTINEL_MASTER,
                               timeout=settings.VOKAFLOW_BROKER_TIMEOUT)
