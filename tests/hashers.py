"""A real PBKDF2 hasher that counts how often it hashes, to show the login limit refuses before hashing."""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class CountingPBKDF2Hasher(PBKDF2PasswordHasher):
    algorithm = "pbkdf2_sha256_counted"
    iterations = 1000  # the count matters here, not the cost
    calls = 0

    def encode(self, password, salt, iterations=None):
        type(self).calls += 1
        return super().encode(password, salt, iterations)
